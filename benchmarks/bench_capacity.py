"""How well and how cheaply ``hpload capacity`` finds the capacity of the calibrated (batching) echo server.

    .venv/bin/python benchmarks/bench_capacity.py [--seeds 20] [--real-seeds 3] [--probe-s 10]

Part 1 (fast): over ``--seeds`` arrival seeds and several SLOs, probe outcomes come from the simulator
(``hpload.scenarios.capacity_sim``); the truth is the simulator's fine scan for the same seeds, probe length and
warm-up. Found capacity / truth, and probe-seconds (warm-up + probe + drain, early stops included) against two
baselines that reach the same precision: a uniform scan (rates k * precision * truth, k = 1, 2, ... until the first
failure: an oracle step, generous to it; vLLM's sweep scans a uniform list) and plain geometric bisection of
[start_rate, max_rate] with full probes and no early stop (AIPerf's and Vidur's kind), both simulated the same way.

Part 2: ``--real-seeds`` searches against the real echo server in batching mode (``find_capacity``), compared with
the simulated truth; the baselines' costs for those seeds are the simulated ones.

Targets (issue 16): median |found / truth - 1| within 5%; median probe-seconds below both baselines. A missed target
is printed as MISSED.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

from hpload.loadgen.specs import SLO, WorkloadSpec
from hpload.scenarios.capacity import Ask, CapacitySpec, search_sync
from hpload.scenarios.capacity_sim import simulate_probe, true_capacity
from hpload.servers.echo.batching import BatchingModel

MODEL = BatchingModel(step_ms=10.0, step_per_seq_ms=0.5, max_batch=16, prefill_ms_per_token=0.02)
INPUT_LEN, MAX_TOKENS = 128, 32
SLOS = {
    "ttft_p99<=200,tpot_p99<=25": SLO(ttft_p99_ms=200, tpot_p99_ms=25),
    "ttft_p99<=500": SLO(ttft_p99_ms=500),
    "ttft_p99<=1000,tpot_p99<=19.2": SLO(ttft_p99_ms=1000, tpot_p99_ms=19.2),
    "99% within ttft<=300": SLO(ttft_ms=300, min_good_fraction=0.99),
}


def _probe(spec: CapacitySpec, slo: SLO, seed: int, rate: float, early: bool = False) -> tuple[bool, float]:
    s = spec if early else spec.model_copy(update={"early_stop": False})
    p = simulate_probe(MODEL, Ask(rate, "full", 0), slo, s, input_len=INPUT_LEN, max_tokens=MAX_TOKENS, seed=seed)
    return p.passed, p.seconds


def uniform_scan(spec: CapacitySpec, slo: SLO, seed: int, truth: float) -> tuple[float, float]:
    step = spec.precision * max(truth, spec.min_rate)
    found, cost, k = 0.0, 0.0, 1
    while k * step <= spec.max_rate:
        ok, seconds = _probe(spec, slo, seed, round(k * step, 6))
        cost += seconds
        if not ok:
            break
        found = k * step
        k += 1
    return found, cost


def plain_bisection(spec: CapacitySpec, slo: SLO, seed: int) -> tuple[float, float]:
    lo, hi, cost = spec.start_rate, spec.max_rate, 0.0
    while hi / lo - 1 > spec.precision:
        mid = math.sqrt(lo * hi)
        ok, seconds = _probe(spec, slo, seed, mid)
        cost += seconds
        lo, hi = (mid, hi) if ok else (lo, mid)
    return lo, cost


def ours(spec: CapacitySpec, slo: SLO, seed: int) -> tuple[float, float, float | None, float | None, int]:
    outcome, probes = search_sync(lambda a: simulate_probe(MODEL, a, slo, spec, input_len=INPUT_LEN,
                                                           max_tokens=MAX_TOKENS, seed=seed), spec)  # fmt: skip
    return outcome.capacity, sum(p.seconds for p in probes), outcome.lo, outcome.hi, len(probes)


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def part1(spec: CapacitySpec, seeds: int) -> None:
    print(f"== simulated probes: {seeds} seeds x {len(SLOS)} SLOs, probe {spec.probe_s:g} s after {spec.warmup_s:g} s "
          f"warm-up, precision {100 * spec.precision:g}%, model {MODEL}")
    head = (f"{'SLO':<30} {'truth':>7} {'found/truth':>11} {'in interval':>11} {'probes':>6} {'ours s':>7} "
            f"{'ours r=0 s':>10} {'uniform s':>9} {'bisect s':>8} {'bisect/truth':>12}")  # fmt: skip
    print(head)
    errs, held, wins_u, wins_b, costs, costs_u, costs_b, outside = [], [], [], [], [], [], [], []
    for name, slo in SLOS.items():
        rows = []
        for seed in range(seeds):
            truth = true_capacity(MODEL, slo, spec, input_len=INPUT_LEN, max_tokens=MAX_TOKENS, seed=seed)
            found, cost, lo, hi, n = ours(spec, slo, seed)
            _, cost0, *_ = ours(spec.model_copy(update={"replicates": 0}), slo, seed)
            _, cost_u = uniform_scan(spec, slo, seed, truth)
            found_b, cost_b = plain_bisection(spec, slo, seed)
            rows.append((truth, found / truth, lo is not None and hi is not None and lo <= truth <= hi, n, cost, cost0,
                         cost_u, cost_b, found_b / truth))  # fmt: skip
            errs.append(abs(found / truth - 1))
            if lo is not None and hi is not None and not lo <= truth <= hi:
                outside.append(max(lo / truth - 1, truth / hi - 1))
            held.append(rows[-1][2])
            costs.append(cost)
            costs_u.append(cost_u)
            costs_b.append(cost_b)
            wins_u.append(cost < cost_u)
            wins_b.append(cost < cost_b)
        med = [_median([float(r[i]) for r in rows]) for i in range(9)]
        print(f"{name:<30} {med[0]:>7.2f} {med[1]:>11.3f} {sum(r[2] for r in rows):>8}/{len(rows):<2} {med[3]:>6.0f} "
              f"{med[4]:>7.1f} {med[5]:>10.1f} {med[6]:>9.1f} {med[7]:>8.1f} {med[8]:>12.3f}")  # fmt: skip
    print(f"overall: median |found/truth - 1| = {100 * _median(errs):.2f}% (target <= 5%: "
          f"{'met' if _median(errs) <= 0.05 else 'MISSED'}); truth inside [lo, hi] in {sum(held)}/{len(held)}"
          f"{f', the others at most {100 * max(outside):.1f}% outside' if outside else ''}")
    print(f"overall: median probe-seconds ours {_median(costs):.1f}, uniform scan {_median(costs_u):.1f} "
          f"(ours/uniform {_median(costs) / _median(costs_u):.2f}), plain bisection {_median(costs_b):.1f} "
          f"(ours/bisection {_median(costs) / _median(costs_b):.2f}); ours cheaper in {sum(wins_u)}/{len(wins_u)} vs "
          f"uniform, {sum(wins_b)}/{len(wins_b)} vs bisection (target: fewer than both, median: "
          f"{'met' if _median(costs) < min(_median(costs_u), _median(costs_b)) else 'MISSED'})")


def part2(spec: CapacitySpec, seeds: int) -> None:
    from hpload.scenarios.capacity_run import SearchSettings, find_capacity
    from hpload.scenarios.results import ResultStore
    from hpload.servers.settings import EchoSettings

    slo = SLOS["ttft_p99<=500"]
    print(f"\n== real calibrated echo server: {seeds} seeds, SLO ttft_p99<=500, probe {spec.probe_s:g} s")
    server = EchoSettings(label="echo-batching", batching=True, step_ms=MODEL.step_ms,
                          step_per_seq_ms=MODEL.step_per_seq_ms, max_batch=MODEL.max_batch,
                          prefill_ms_per_token=MODEL.prefill_ms_per_token)  # fmt: skip
    workload = WorkloadSpec(input_len=INPUT_LEN, max_tokens=MAX_TOKENS, ignore_eos=True)
    ratios, held, costs, costs_u, costs_b = [], [], [], [], []
    for seed in range(seeds):
        truth = true_capacity(MODEL, slo, spec, input_len=INPUT_LEN, max_tokens=MAX_TOKENS, seed=seed)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.monotonic()
            rec = asyncio.run(find_capacity(server, SearchSettings(workload=workload, slo=slo, spec=spec, seed=seed),
                                            ResultStore(Path(tmp))))  # fmt: skip
            wall = time.monotonic() - t0
        lo, hi = rec["interval"]["lo"], rec["interval"]["hi"]
        ratios.append(rec["capacity_rps"] / truth)
        held.append(lo is not None and hi is not None and lo <= truth <= hi)
        costs.append(rec["probe_seconds"])
        costs_u.append(uniform_scan(spec, slo, seed, truth)[1])
        costs_b.append(plain_bisection(spec, slo, seed)[1])
        print(f"seed {seed}: truth {truth:.2f}, found {rec['capacity_rps']:.4g} in [{lo}, {hi}) "
              f"({'holds' if held[-1] else 'MISSES'} the truth), {len(rec['probes'])} probes, "
              f"{rec['probe_seconds']:.1f} probe-s ({wall:.0f} s wall); simulated uniform {costs_u[-1]:.1f} s, "
              f"bisection {costs_b[-1]:.1f} s")  # fmt: skip
    err = _median([abs(r - 1) for r in ratios])
    print(f"real: median found/truth {_median(ratios):.3f} (|err| {100 * err:.1f}%, target <= 5%: "
          f"{'met' if err <= 0.05 else 'MISSED'}), truth inside [lo, hi] {sum(held)}/{len(held)}; median probe-s "
          f"{_median(costs):.1f} vs uniform {_median(costs_u):.1f}, bisection {_median(costs_b):.1f} ("
          f"{'met' if _median(costs) < min(_median(costs_u), _median(costs_b)) else 'MISSED'})")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--real-seeds", type=int, default=3)
    p.add_argument("--probe-s", type=float, default=10.0)
    p.add_argument("--warmup-s", type=float, default=2.0)
    args = p.parse_args()
    spec = CapacitySpec(start_rate=1.0, probe_s=args.probe_s, warmup_s=args.warmup_s, drain_timeout_s=30)
    print(f"python {sys.version.split()[0]}; capacity spec {spec.model_dump()}")
    part1(spec, args.seeds)
    if args.real_seeds:
        part2(spec, args.real_seeds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
