"""Open-loop send times, computed before the run from the seed, and closed-loop slot levels over time.

An open-loop schedule is a unit-rate arrival process (gaps of 1, Exp(1) or Gamma(k, 1/k)) mapped through the
inverse of the cumulative rate, so ramps and rate steps use the same random stream: the same seed gives the same
send times, whatever the client's speed. Warm-up sends are part of the schedule (they come first).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from hpload.loadgen.specs import LoadSpec

_BATCH = 4096


@dataclass(frozen=True)
class Segment:
    """Rate rising (or falling) linearly from ``r0`` to ``r1`` req/s over ``duration_s`` (inf = forever)."""

    duration_s: float
    r0: float
    r1: float

    def mass(self) -> float:
        return (self.r0 + self.r1) / 2 * self.duration_s

    def time_for(self, u: float) -> float:
        """Seconds into the segment where the cumulative rate reaches ``u``."""
        if self.r1 == self.r0 or math.isinf(self.duration_s):
            return u / self.r0
        a = (self.r1 - self.r0) / (2 * self.duration_s)
        return (-self.r0 + math.sqrt(self.r0 * self.r0 + 4 * a * u)) / (2 * a)


def rate_segments(load: LoadSpec) -> list[Segment]:
    if load.steps:
        segs = [Segment(s.duration_s, s.rate or 0.0, s.rate or 0.0) for s in load.steps]
    else:
        assert load.rate is not None
        segs = [Segment(math.inf, load.rate, load.rate)]
    if load.ramp_s > 0:
        segs.insert(0, Segment(load.ramp_s, 0.0, segs[0].r0))
    return segs


def _unit_gaps(load: LoadSpec, rng: np.random.Generator) -> Iterator[float]:
    while True:
        if load.arrival == "constant":
            batch = np.ones(_BATCH)
        elif load.arrival == "poisson":
            batch = rng.exponential(1.0, _BATCH)
        else:
            batch = rng.gamma(load.burstiness, 1.0 / load.burstiness, _BATCH)
        yield from batch.tolist()


def open_loop_schedule(load: LoadSpec) -> tuple[list[int], int]:
    """(send offsets in ns from the run start, count of leading warm-up sends). Bounded by warm-up + duration and
    by warm-up + ``num_requests`` measured sends."""
    segs = rate_segments(load)
    # A step profile is the whole timeline (warm-up is its first seconds); a plain rate runs warm-up + duration.
    horizon_s = math.inf
    if load.steps:
        horizon_s = load.ramp_s + sum(s.duration_s for s in load.steps)
    elif load.duration_s is not None:
        horizon_s = load.warmup_s + load.duration_s
    return send_offsets(_open_loop_times(load, segs), load, horizon_s)


def _open_loop_times(load: LoadSpec, segs: list[Segment]) -> Iterator[float]:
    rng = np.random.default_rng(load.seed)
    first = True
    u = 0.0  # cumulative unit-rate mass consumed so far
    seg_i, seg_start_s, seg_mass_start = 0, 0.0, 0.0
    for gap in _unit_gaps(load, rng):
        # The first send goes out at t=0 for constant arrivals (gap counted after it), like vLLM's client.
        if not first or load.arrival != "constant":
            u += gap
        first = False
        while seg_i < len(segs) - 1 and u > seg_mass_start + segs[seg_i].mass():
            seg_mass_start += segs[seg_i].mass()
            seg_start_s += segs[seg_i].duration_s
            seg_i += 1
        seg = segs[seg_i]
        if seg_i == len(segs) - 1 and not math.isinf(seg.duration_s) and u > seg_mass_start + seg.mass():
            return
        yield seg_start_s + seg.time_for(u - seg_mass_start)


def send_offsets(times_s: Iterable[float], load: LoadSpec, horizon_s: float) -> tuple[list[int], int]:
    """(send offsets in ns, count of leading warm-up sends) for send times in order: cut at ``horizon_s`` and after
    ``load.num_requests`` measured sends; the leading sends before ``warmup_s`` or ``warmup_requests`` warm up."""
    offsets: list[int] = []
    warm = measured = 0
    for t in times_s:
        if t >= horizon_s:
            break
        in_warmup = t < load.warmup_s or len(offsets) < load.warmup_requests
        if in_warmup and measured == 0:
            warm += 1
        else:
            measured += 1
        offsets.append(int(t * 1e9))
        if load.num_requests is not None and measured >= load.num_requests:
            break
    return offsets, warm


def closed_loop_levels(load: LoadSpec) -> list[tuple[float, int]]:
    """(start_s, concurrency) changes for a closed loop; the last level holds until the run ends."""
    if load.steps:
        levels, t = [], 0.0
        for s in load.steps:
            levels.append((t, s.concurrency or 0))
            t += s.duration_s
        levels.append((t, 0))
        return levels
    assert load.concurrency is not None
    return [(0.0, load.concurrency)]
