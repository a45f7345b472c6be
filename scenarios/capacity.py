"""Capacity under an SLO: the highest offered request rate whose probe meets the SLO (docs/capacity.md).

This module is the search itself, free of servers and of I/O: ``CapacitySpec`` (the ``[capacity]`` table),
``check_slo`` (what an SLO must say for a search), ``plan`` (the next probe, from the probes so far), ``judge`` (a
finished probe's verdict) and ``broken`` (the early stop). ``hpload.scenarios.capacity_run`` drives real servers with
it; ``hpload.scenarios.capacity_sim`` drives the calibrated model; both go through ``search``.

The plan is a pure function of the probes so far, so a search resumed from the probes on disk takes the same path.

What is found. Every rate gets a verdict from its probes: a failure of any probe counts (a short scouting probe
that already breaks the SLO is a failure), a pass only from a full-length probe; a rate passes when its passes
outnumber its failures (a tie fails). ``hi`` is the lowest failing rate, ``lo`` the highest passing rate below it:
the capacity is ``lo`` and ``[lo, hi]`` its interval, narrowed until ``hi / lo - 1 <= precision`` and ``lo``
passed ``1 + replicates`` times. Pass/fail need not be monotone in the rate (noise, cliffs): the search reports the
knee below the *first* failure it finds; a rate above ``hi`` that passed is listed in ``non_monotone`` and never
raises the capacity.

How it spends little. Passing probes cost their whole length, failing ones stop as soon as the SLO is clearly
broken (``broken``). So the knee is bracketed by doubling from ``start_rate`` with scouting probes of
``scout_fraction`` of the probe length, then narrowed by geometric bisection with full probes.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hpload.errors import HploadError
from hpload.loadgen.specs import SLO

Kind = Literal["scout", "full"]


class CapacitySpec(BaseModel):
    """The ``[capacity]`` table of a scenario (``hpload capacity`` flags override it)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    start_rate: float = Field(default=1.0, gt=0)
    """The first rate probed (req/s); the search doubles from it (or halves when it already fails)."""
    min_rate: float = Field(default=0.05, gt=0)
    """Below this a server meets the SLO at no rate: capacity 0."""
    max_rate: float = Field(default=1000.0, gt=0)
    """The search stops doubling here; a server that passes at it reports capacity >= max_rate."""
    precision: float = Field(default=0.05, gt=0, lt=1)
    """Narrow until the lowest failed rate is within this fraction above the highest passed one."""
    probe_s: float = Field(default=20.0, gt=0)
    """The measured length of a full probe (after ``warmup_s``)."""
    warmup_s: float = Field(default=5.0, ge=0)
    """Requests sent in the first seconds of every probe are excluded (the queue fills meanwhile)."""
    scout_fraction: float = Field(default=0.25, gt=0, le=1)
    """Bracketing probes measure this fraction of ``probe_s``; their passes only guide, never count."""
    replicates: int = Field(default=1, ge=0, le=5)
    """Extra full probes (other arrival seeds) of the capacity rate once the interval is narrow."""
    early_stop: bool = True
    """Stop a probe once the SLO is clearly broken (see docs/capacity.md)."""
    quantile: float = Field(default=0.99, gt=0, lt=1)
    """The quantile that p99 limits and the early stop reason with (0.99 for p99)."""
    drain_timeout_s: float = Field(default=30.0, ge=0)
    """After a probe, requests still in flight get this long, then count as censored misses."""
    idle_timeout_s: float = Field(default=120.0, gt=0)
    """Between probes, wait this long at most for the server to report no running or waiting requests."""
    capacity_threshold: float | None = Field(default=None, ge=0)
    """Fail the run (threshold exit code) when a server's capacity is below this many req/s."""
    coarse_precision: float = Field(default=0.25, gt=0, lt=1)
    """``hpload tune`` (objective capacity): every trial first searches to this precision with shorter probes; only
    a configuration whose coarse interval could hold the best capacity is searched to ``precision``."""
    coarse_probe_fraction: float = Field(default=0.5, gt=0, le=1)
    """The coarse search's probes measure this fraction of ``probe_s``."""


# ---------------------------------------------------------------------------------------------------------------
# the SLO a search needs

_PERCENTILE_KEYS = ("ttft_p99_ms", "tpot_p99_ms", "itl_p99_ms", "e2el_p99_ms", "ttft_p50_ms", "tpot_p50_ms")


def check_slo(slo: SLO) -> None:
    """A one-line error naming the field when the SLO cannot decide a probe or contradicts itself."""
    d = slo.model_dump()
    deciding = [*_PERCENTILE_KEYS, "max_error_rate", "min_good_fraction"]
    if not any(d.get(k) is not None for k in deciding):
        raise HploadError(
            "slo: a capacity search needs a limit to meet; fix: set [slo] ttft_p99_ms, tpot_p99_ms, max_error_rate "
            "or min_good_fraction (with ttft_ms/tpot_ms/e2el_ms), or pass --slo ttft_p99_ms=500"
        )
    for metric in ("ttft", "tpot"):
        p50, p99 = d.get(f"{metric}_p50_ms"), d.get(f"{metric}_p99_ms")
        if p50 is not None and p99 is not None and p50 > p99:
            raise HploadError(f"slo.{metric}_p50_ms: {p50:g} is above {metric}_p99_ms {p99:g}, which no run can "
                              f"meet otherwise; fix: lower {metric}_p50_ms or raise {metric}_p99_ms")
    if d.get("min_good_fraction") is not None and not slo.has_request_limits:
        raise HploadError("slo.min_good_fraction: it counts requests within ttft_ms/tpot_ms/e2el_ms, and none is "
                          "set; fix: set [slo] ttft_ms (or tpot_ms, e2el_ms) too")
    if d.get("e2el_ms") is not None and d.get("ttft_ms") is not None and d["e2el_ms"] < d["ttft_ms"]:
        raise HploadError(f"slo.e2el_ms: {d['e2el_ms']:g} is below ttft_ms {d['ttft_ms']:g}; fix: raise e2el_ms")
    if d.get("min_goodput") is not None:
        raise HploadError("slo.min_goodput: an absolute goodput says nothing about a rate's SLO in a capacity search; "
                          "fix: use min_good_fraction (e.g. 0.99) with per-request limits")


def parse_slo_overrides(base: SLO, items: list[str]) -> SLO:
    """``--slo KEY=VALUE`` flags over the scenario's ``[slo]``; errors name the flag."""
    data = base.model_dump()
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in SLO.model_fields:
            raise HploadError(f"--slo {item}: not KEY=VALUE with a known key; fix: use one of "
                              f"{', '.join(SLO.model_fields)}")
        try:
            data[key] = None if value.strip().lower() in ("", "none") else float(value)
        except ValueError:
            raise HploadError(f"--slo {key}: '{value}' is not a number; fix: e.g. --slo {key}=500") from None
    try:
        return SLO.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise HploadError(f"--slo {loc}: {first['msg']}; fix: change that value") from None


# ---------------------------------------------------------------------------------------------------------------
# probes


@dataclass
class Probe:
    """One probe: a rate held for a (scouting or full) probe length, and what it showed."""

    rate: float
    kind: Kind
    replicate: int
    seed: int
    passed: bool
    violations: list[str] = field(default_factory=list)
    stopped_early: str | None = None  # the early-stop reason
    error: str | None = None  # the server crashed or never came up
    seconds: float = 0.0  # probe-seconds spent (warm-up, probe and drain)
    stats: dict[str, Any] = field(default_factory=dict)  # p50/p99 ttft and tpot, throughputs, counts
    point_id: str | None = None
    before: str | None = None  # how the server was left before it: drained to idle, prefix cache reset

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Probe:
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})


@dataclass(frozen=True)
class Ask:
    rate: float
    kind: Kind
    replicate: int


@dataclass
class Outcome:
    capacity: float  # req/s; 0 when no rate met the SLO
    lo: float | None
    hi: float | None
    reason: str  # how the search ended, in words
    lo_passes: str = ""  # e.g. "2/2 full probes passed"
    non_monotone: list[float] = field(default_factory=list)


def probe_lengths(spec: CapacitySpec, kind: Kind) -> tuple[float, float]:
    """(warm-up, measured) seconds of a probe. A scout shortens both: at the low rates it mostly runs at, the queue
    is short and fills in a fraction of the warm-up."""
    f = spec.scout_fraction if kind == "scout" else 1.0
    return spec.warmup_s * f, spec.probe_s * f


def round_rate(rate: float) -> float:
    """Four significant digits: probe ids stay stable across reruns."""
    return float(f"{rate:.4g}")


def _verdicts(probes: list[Probe]) -> dict[float, tuple[int, int, int]]:
    """rate -> (full passes, failures of any kind, scout passes)."""
    out: dict[float, tuple[int, int, int]] = {}
    for p in probes:
        fp, f, sp = out.get(p.rate, (0, 0, 0))
        if not p.passed:
            f += 1
        elif p.kind == "full":
            fp += 1
        else:
            sp += 1
        out[p.rate] = (fp, f, sp)
    return out


def _count(probes: list[Probe], rate: float, kind: Kind) -> int:
    return sum(1 for p in probes if p.rate == rate and p.kind == kind)


def plan(probes: list[Probe], spec: CapacitySpec) -> Ask | Outcome:
    """The next probe to run, or the search's outcome."""
    v = _verdicts(probes)
    fails = sorted(r for r, (fp, f, _) in v.items() if f > 0 and f >= fp)
    hi = fails[0] if fails else None
    below = [r for r in v if hi is None or r < hi]
    lo = max((r for r in below if v[r][0] > v[r][1]), default=None)
    scout_lo = max((r for r in below if v[r][2] > 0 and v[r][0] == 0 and v[r][1] == 0), default=None)
    non_monotone = sorted(r for r, (fp, f, _) in v.items() if hi is not None and r > hi and fp > f)
    scouting = spec.scout_fraction < 1
    first_kind: Kind = "scout" if scouting else "full"
    if not probes:
        return Ask(round_rate(min(max(spec.start_rate, spec.min_rate), spec.max_rate)), first_kind, 0)
    # Bracketing: double until something fails, halve until something passes.
    if hi is None:
        top = max(r for r in v)
        if top >= spec.max_rate:
            if lo is not None and lo >= spec.max_rate:
                return Outcome(lo, lo, None, f"met the SLO at max_rate {spec.max_rate:g} req/s: capacity is at least "
                               "that; fix: raise capacity.max_rate", _passes(v, lo), non_monotone)
            return Ask(round_rate(spec.max_rate), "full", _count(probes, spec.max_rate, "full"))
        return Ask(round_rate(min(top * 2, spec.max_rate)), first_kind if lo is None else "full", 0)
    anchor = lo if lo is not None else scout_lo
    if anchor is None:
        if hi <= spec.min_rate:
            why = next((p.violations[0] for p in probes if p.rate == hi and p.violations), "") or "failed"
            err = next((p.error for p in probes if p.rate == hi and p.error), None)
            return Outcome(0.0, None, hi, f"meets the SLO at no rate: at {hi:g} req/s (min_rate) {err or why}",
                           non_monotone=non_monotone)
        kind: Kind = first_kind if not any(p.kind == "full" for p in probes) else "full"
        return Ask(round_rate(max(hi / 2, spec.min_rate)), kind, 0)
    if hi / anchor - 1 > spec.precision:
        mid = round_rate(math.sqrt(anchor * hi))
        if mid <= anchor or mid >= hi:  # rounding left nothing between them
            mid = anchor
        if mid != anchor:
            return Ask(mid, "full", _count(probes, mid, "full"))
    if lo is None:
        return Ask(anchor, "full", _count(probes, anchor, "full"))  # a scout's pass, now at full length
    if _count(probes, lo, "full") < 1 + spec.replicates:
        return Ask(lo, "full", _count(probes, lo, "full"))
    return Outcome(lo, lo, hi, f"narrowed to {100 * (hi / lo - 1):.1f}% (precision {100 * spec.precision:g}%)",
                   _passes(v, lo), non_monotone)


def _passes(v: dict[float, tuple[int, int, int]], rate: float) -> str:
    fp, f, _ = v[rate]
    return f"{fp}/{fp + f} full probes passed"


async def search(
    run_probe: Callable[[Ask], Awaitable[Probe]], spec: CapacitySpec, done: list[Probe] | None = None,
    max_probes: int = 60,
) -> tuple[Outcome, list[Probe]]:
    """Probe until ``plan`` says done. ``done``: probes already on disk (a resumed search replays them)."""
    probes = list(done or [])
    for _ in range(max_probes):
        step = plan(probes, spec)
        if isinstance(step, Outcome):
            return step, probes
        probes.append(await run_probe(step))
    step = plan(probes, spec)
    if isinstance(step, Outcome):
        return step, probes
    raise HploadError(f"capacity: no answer after {max_probes} probes; fix: loosen capacity.precision")


def search_sync(run_probe: Callable[[Ask], Probe], spec: CapacitySpec, max_probes: int = 60) -> tuple[Outcome, list[Probe]]:
    """``search`` for a probe that needs no event loop (the simulator)."""
    probes: list[Probe] = []
    for _ in range(max_probes):
        step = plan(probes, spec)
        if isinstance(step, Outcome):
            return step, probes
        probes.append(run_probe(step))
    raise HploadError(f"capacity: no answer after {max_probes} probes; fix: loosen capacity.precision")


# ---------------------------------------------------------------------------------------------------------------
# verdicts


@dataclass
class ProbeState:
    """What a probe shows while it runs (measured phase only), for the early stop."""

    elapsed_s: float  # into the measured phase
    completed: int
    failed: int
    in_flight: int
    over: dict[str, int]  # metric -> completed requests past its limit (ttft, tpot)
    achieved_rate: float  # completions per second of the measured phase so far


def broken(state: ProbeState, slo: SLO, spec: CapacitySpec, rate: float, max_tokens: int) -> str | None:
    """Why the SLO is already clearly broken, or None. Requests still in flight beyond what the SLO allows count as
    censored misses (their latency is at least their age), never as dropped."""
    expected = rate * spec.probe_s
    allowed_misses = (1 - spec.quantile) * expected * 1.1 + 2  # +10% and 2: the Poisson count varies
    ttft = slo.ttft_p99_ms or slo.ttft_ms or 1000.0
    tpot = slo.tpot_p99_ms or slo.tpot_ms or 100.0
    e2el_s = (slo.e2el_ms or (ttft + max(max_tokens - 1, 0) * tpot)) / 1000
    # Little's law: if every request met the limits, about rate * e2el would be in flight.
    allowed_in_flight = 2 * rate * e2el_s + 8
    # Queueing delays the first token: a request waiting in the queue is a censored miss only for limits it
    # delays (a TPOT-only SLO can hold under any queue, so there the queue proves nothing).
    queue_hurts = any(x is not None for x in (slo.ttft_p99_ms, slo.ttft_ms, slo.e2el_ms, slo.e2el_p99_ms))
    censored = max(0, state.in_flight - allowed_in_flight) if queue_hurts else 0
    if queue_hurts and state.in_flight > 4 * allowed_in_flight:
        return f"queue keeps growing: {state.in_flight} in flight, the SLO allows about {allowed_in_flight:.0f}"
    if state.elapsed_s > 3 and state.achieved_rate < 0.5 * rate and censored > 0:
        return f"achieved {state.achieved_rate:.2f} req/s of {rate:g} offered, {state.in_flight} in flight"
    over = 0
    if slo.ttft_p99_ms is not None or slo.tpot_p99_ms is not None:
        over = max(state.over.get("ttft", 0), state.over.get("tpot", 0))
    errors_allowed = (slo.max_error_rate or 0.0) * expected * 1.1 + 2
    if slo.max_error_rate is not None and state.failed > errors_allowed:
        return f"{state.failed} failed requests, more than max_error_rate {slo.max_error_rate:g} allows"
    misses = over + censored + state.failed
    if (slo.ttft_p99_ms or slo.tpot_p99_ms) and misses > allowed_misses:
        return (f"{misses:.0f} requests past the limits (censored in flight included), more than the "
                f"{allowed_misses:.0f} a p{100 * spec.quantile:g} allows over the probe")
    if slo.min_good_fraction is not None:
        allowed = (1 - slo.min_good_fraction) * expected * 1.1 + 2
        if misses > allowed:
            return f"{misses:.0f} requests missed the per-request limits, more than min_good_fraction allows"
    return None


def censored_quantile(q: float, done: int, censored: int) -> float | None:
    """The quantile of the finished requests that is the ``q`` quantile of all of them when the censored ones are
    slower than every finished one; None when the censored alone break it."""
    if done == 0:
        return None
    adjusted = q * (done + censored) / done
    return adjusted if adjusted <= 1.0 else None


def judge(summary: dict[str, Any], slo: SLO, spec: CapacitySpec) -> list[str]:
    """A finished probe's broken limits (empty = pass). ``summary`` is a RunResult-style summary whose latency
    percentiles already count censored requests (``censored_quantile``); the limits, goodput fraction included, are
    judged by the one SLO evaluator (``hpload.loadgen.slo``)."""
    from hpload.loadgen.slo import violations

    out = violations(slo, summary)
    done, failed, censored = int(summary.get("completed", 0)), int(summary.get("failed", 0)), int(
        summary.get("incomplete", 0))  # fmt: skip
    total = done + failed + censored
    if total == 0:
        # A rate so low that the probe sent nothing measured: nothing broke the SLO.
        out = [v for v in out if not v.startswith("completed 0")]
    if total and censored and censored_quantile(spec.quantile, done, censored) is None and (
            slo.ttft_p99_ms or slo.tpot_p99_ms or slo.e2el_p99_ms):  # fmt: skip
        out.append(f"{censored} requests unfinished at the end: more than p{100 * spec.quantile:g} allows")
    return out
