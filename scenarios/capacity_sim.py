"""The calibrated echo server's model, simulated: the truth a capacity search is checked against.

A discrete-event simulation of the batching model of docs/capacity.md, written apart from the server's own code
(``hpload.servers.echo.batching``), shares only the model's parameters with it. Arrivals are the load generator's
own seeded schedule (``open_loop_schedule``): the same seed gives the real probe and the simulated one the same send
times, and the schedule of one seed at two rates is the same unit-rate process rescaled (common random numbers).

``simulate_probe`` gives one probe's verdict and its cost with the same ``judge`` and early stop (``broken``) as real
probes; ``true_capacity`` scans the simulated verdicts finely for the first failing rate.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from hpload.loadgen.schedule import open_loop_schedule
from hpload.loadgen.specs import SLO, LoadSpec
from hpload.scenarios.capacity import (
    Ask,
    CapacitySpec,
    Probe,
    ProbeState,
    broken,
    censored_quantile,
    judge,
    probe_lengths,
)
from hpload.servers.echo.batching import BatchingModel

_TICK_S = 0.5  # the load generator's snapshot interval: the early stop looks this often


@dataclass
class SimRequest:
    arrival_s: float
    prompt: int
    n: int
    first_s: float = float("nan")
    last_s: float = float("nan")


def run_model(model: BatchingModel, requests: list[SimRequest], until_s: float) -> None:
    """Fill in ``first_s``/``last_s`` of every request finished by ``until_s`` (requests sorted by arrival)."""
    t = 0.0
    i = 0
    queue: deque[SimRequest] = deque()
    running: list[tuple[SimRequest, int]] = []  # (request, tokens so far)
    total = len(requests)
    while t <= until_s:
        if not running and not queue:
            if i >= total:
                return
            t = max(t, requests[i].arrival_s)
        while i < total and requests[i].arrival_s <= t:
            queue.append(requests[i])
            i += 1
        admitted_tokens = 0
        while queue and len(running) < model.max_batch:
            req = queue.popleft()
            running.append((req, 0))
            admitted_tokens += req.prompt
        ms = model.step_ms + model.step_per_seq_ms * len(running) + model.prefill_ms_per_token * admitted_tokens
        t += ms / 1000
        if t > until_s:
            return
        keep: list[tuple[SimRequest, int]] = []
        for req, done in running:
            if done == 0:
                req.first_s = t
            done += 1
            if done >= req.n:
                req.last_s = t
            else:
                keep.append((req, done))
        running = keep


def probe_load(rate: float, probe_s: float, warmup_s: float, seed: int) -> LoadSpec:
    return LoadSpec(rate=rate, duration_s=probe_s, warmup_s=warmup_s, seed=seed, arrival="poisson")


def simulate_probe(
    model: BatchingModel, ask: Ask, slo: SLO, spec: CapacitySpec, *, input_len: int, max_tokens: int, seed: int = 0,
) -> Probe:  # fmt: skip
    """One probe of the model: the verdict and the probe-seconds it costs, early stop included."""
    warmup_s, probe_s = probe_lengths(spec, ask.kind)
    run_seed = seed + ask.replicate
    offsets, warm = open_loop_schedule(probe_load(ask.rate, probe_s, warmup_s, run_seed))
    reqs = [SimRequest(o / 1e9, input_len, max_tokens) for o in offsets]
    end_s = warmup_s + probe_s
    run_model(model, reqs, end_s + spec.drain_timeout_s)
    measured = reqs[warm:]
    stopped, stop_at = None, None
    if spec.early_stop:
        tick_spec = spec.model_copy(update={"probe_s": probe_s})
        t = warmup_s + _TICK_S
        while t < end_s:
            state = _state_at(reqs, warm, t, warmup_s, slo)
            stopped = broken(state, slo, tick_spec, ask.rate, max_tokens)
            if stopped:
                stop_at = t
                break
            t += _TICK_S
    if stop_at is not None:
        cut = [r for r in measured if r.arrival_s < stop_at]
        summary = _summary(cut, stop_at, slo, spec)
        seconds = stop_at
    else:
        summary = _summary(measured, end_s + spec.drain_timeout_s, slo, spec)
        last = max((r.last_s for r in measured if r.last_s == r.last_s), default=end_s)
        seconds = max(end_s, min(last, end_s + spec.drain_timeout_s))
    violations = judge(summary, slo, spec)
    if stopped:
        violations = [stopped, *violations]
    return Probe(rate=ask.rate, kind=ask.kind, replicate=ask.replicate, seed=run_seed, passed=not violations,
                 violations=violations, stopped_early=stopped, seconds=seconds, stats=_stats(summary))  # fmt: skip


def _state_at(reqs: list[SimRequest], warm: int, t: float, warmup_s: float, slo: SLO) -> ProbeState:
    measured = [r for r in reqs[warm:] if r.arrival_s <= t]
    done = [r for r in measured if r.last_s <= t]
    ttft_limit = (slo.ttft_p99_ms or slo.ttft_ms or float("inf")) / 1000
    tpot_limit = (slo.tpot_p99_ms or slo.tpot_ms or float("inf")) / 1000
    in_flight = sum(1 for r in reqs if r.arrival_s <= t and not r.last_s <= t)
    over_ttft = sum(1 for r in done if r.first_s - r.arrival_s > ttft_limit)
    over_tpot = sum(1 for r in done if r.n > 1 and (r.last_s - r.first_s) / (r.n - 1) > tpot_limit)
    elapsed = t - warmup_s
    return ProbeState(elapsed_s=elapsed, completed=len(done), failed=0, in_flight=in_flight,
                      over={"ttft": over_ttft, "tpot": over_tpot}, achieved_rate=len(done) / max(elapsed, 1e-9))  # fmt: skip


def _summary(measured: list[SimRequest], horizon_s: float, slo: SLO, spec: CapacitySpec) -> dict[str, float]:
    done = [r for r in measured if r.last_s <= horizon_s]
    censored = len(measured) - len(done)
    s: dict[str, float] = {"completed": len(done), "failed": 0, "incomplete": censored}
    q = censored_quantile(spec.quantile, len(done), censored)
    ttft = np.array([r.first_s - r.arrival_s for r in done]) * 1000
    tpot = np.array([(r.last_s - r.first_s) / (r.n - 1) for r in done if r.n > 1]) * 1000
    for name, values in (("ttft", ttft), ("tpot", tpot)):
        if len(values) == 0:
            s[f"median_{name}_ms"] = s[f"p99_{name}_ms"] = 0.0
            continue
        s[f"median_{name}_ms"] = float(np.percentile(values, 50, method="inverted_cdf"))
        s[f"p99_{name}_ms"] = float("inf") if q is None else float(np.percentile(values, 100 * q, method="inverted_cdf"))
    if done:
        span = max(r.last_s for r in done) - min(r.arrival_s for r in done)
        s["request_throughput"] = len(done) / span if span > 0 else 0.0
        s["output_throughput"] = sum(r.n for r in done) / span if span > 0 else 0.0
    if slo.has_request_limits and measured:
        s["good_fraction"] = sum(1 for r in done if slo.request_ok(int((r.first_s - r.arrival_s) * 1e9),
                                                          int((r.last_s - r.first_s) / max(r.n - 1, 1) * 1e9),
                                                          int((r.last_s - r.arrival_s) * 1e9))) / len(measured)  # fmt: skip
    return s


def _stats(summary: dict[str, float]) -> dict[str, float]:
    keys = ("completed", "failed", "incomplete", "median_ttft_ms", "p99_ttft_ms", "median_tpot_ms", "p99_tpot_ms",
            "request_throughput", "output_throughput")  # fmt: skip
    return {k: summary[k] for k in keys if k in summary}


def probe_verdict(model: BatchingModel, rate: float, slo: SLO, spec: CapacitySpec, *, input_len: int,
                  max_tokens: int, seed: int) -> bool:  # fmt: skip
    """A full probe's verdict without the early stop (the definition of pass)."""
    full = spec.model_copy(update={"early_stop": False})
    return simulate_probe(model, Ask(rate, "full", 0), slo, full, input_len=input_len, max_tokens=max_tokens,
                          seed=seed).passed  # fmt: skip


def true_capacity(model: BatchingModel, slo: SLO, spec: CapacitySpec, *, input_len: int, max_tokens: int,
                  seed: int, resolution: float = 0.005) -> float:  # fmt: skip
    """What a search with ``spec`` should find for arrival seed ``seed``: a rate passes when the full probes of every
    seed the search replicates with (``seed`` .. ``seed + replicates``) pass, as the capacity rate must; the truth is
    the lowest first-failing rate over those seeds (the knee below the first failure)."""
    return min(_knee(model, slo, spec, input_len=input_len, max_tokens=max_tokens, seed=seed + j,
                     resolution=resolution) for j in range(spec.replicates + 1))  # fmt: skip


def _knee(model: BatchingModel, slo: SLO, spec: CapacitySpec, *, input_len: int, max_tokens: int,
          seed: int, resolution: float) -> float:  # fmt: skip
    """The highest rate below the first failing one, scanning up from ``min_rate`` by 10% and then by
    ``resolution`` between the last pass and the first failure. 0 when ``min_rate`` already fails."""
    def ok(r: float) -> bool:
        return probe_verdict(model, r, slo, spec, input_len=input_len, max_tokens=max_tokens, seed=seed)

    r = spec.min_rate
    if not ok(r):
        return 0.0
    while r < spec.max_rate:
        nxt = r * 1.1
        if not ok(nxt):
            break
        r = nxt
    else:
        return spec.max_rate
    while True:
        nxt = r * (1 + resolution)
        if nxt >= r * 1.1 or not ok(nxt):
            return r
        r = nxt
