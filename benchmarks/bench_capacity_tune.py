"""Sample efficiency of ``hpload tune`` (objective capacity) where the truth is known.

The landscape: the calibrated (batching) echo server's settings as the "server settings" (max batch, fixed step
cost, per-sequence step cost, prefill cost per token), its capacity at each grid point under the SLO computed with
the simulator (``hpload.scenarios.capacity_sim``, the same model the server runs). The SLO's TPOT limit makes
cliffs (slow steps meet it at no rate) and the best max batch depends on the step costs (too small a batch queues,
too large a batch breaks the TPOT p99 under Poisson bursts), so the best is an interaction, not a corner.

Figures: restarts (configurations measured) needed to reach 95% of the best capacity, median over seeds, for the
tuner (TPE, engine defaults first, as ``hpload tune`` runs it) and for random search at equal budgets, the grid size
beside them. Each restart in a live study also runs a capacity search; those probe-seconds are benchmarked by
bench_capacity.py. Not modelled: a queue limit (the echo batching model's queue is unbounded).

    .venv/bin/python benchmarks/bench_capacity_tune.py [--seeds 10]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time

from hpload.loadgen.specs import SLO
from hpload.scenarios.capacity import CapacitySpec, search_sync
from hpload.scenarios.capacity_sim import simulate_probe, true_capacity
from hpload.scenarios.capacity_tune import coarse_spec
from hpload.scenarios.landscape import Landscape, replay_study, trials_to_reach
from hpload.servers.echo.batching import BatchingModel

AXES: dict[str, list] = {
    "max_batch": [2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128],
    "step_ms": [4.0, 8.0, 12.0, 16.0],
    "step_per_seq_ms": [0.25, 0.5, 1.0],
    "prefill_ms_per_token": [0.01, 0.04],
}
DEFAULTS = {"max_batch": 16, "step_ms": 8.0, "step_per_seq_ms": 0.5, "prefill_ms_per_token": 0.04}
SLO_ = SLO(ttft_p99_ms=300, tpot_p99_ms=22)
SPEC = CapacitySpec(probe_s=10, warmup_s=2, precision=0.05, replicates=0)
INPUT_LEN, MAX_TOKENS = 128, 32


def landscape() -> Landscape:
    points = {}
    for combo in itertools.product(*AXES.values()):
        s = dict(zip(AXES, combo, strict=True))
        model = BatchingModel(step_ms=s["step_ms"], step_per_seq_ms=s["step_per_seq_ms"], max_batch=s["max_batch"],
                              prefill_ms_per_token=s["prefill_ms_per_token"])  # fmt: skip
        points[combo] = true_capacity(model, SLO_, SPEC, input_len=INPUT_LEN, max_tokens=MAX_TOKENS, seed=0,
                                      resolution=0.01)  # fmt: skip
    return Landscape("echo-batching", dict(AXES), points)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=10)
    args = p.parse_args()
    t0 = time.monotonic()
    land = landscape()
    best = land.best()
    assert best
    best_key = max(land.points, key=lambda k: land.points[k] or 0.0)
    default = land.value(DEFAULTS) or 0.0
    zero = sum(1 for v in land.points.values() if (v or 0.0) < 1.0)
    print(f"python {sys.version.split()[0]}; landscape computed in {time.monotonic() - t0:.0f} s")
    print(f"grid {land.size} points ({' x '.join(f'{k} {len(v)}' for k, v in AXES.items())}); SLO p99 TTFT <= 300 ms, p99 TPOT <= 22 ms; "
          f"input {INPUT_LEN}, output {MAX_TOKENS} tokens")
    print(f"best capacity {best:.1f} req/s at {dict(zip(AXES, best_key, strict=True))}; defaults {DEFAULTS} "
          f"{default:.1f} req/s; {zero} points under 1 req/s (cliffs: the TPOT limit met at almost no rate)")
    for b in AXES["max_batch"]:
        row = [land.value({"max_batch": b, "step_ms": s, "step_per_seq_ms": 0.5, "prefill_ms_per_token": 0.01})
               for s in AXES["step_ms"]]  # fmt: skip
        print(f"  max_batch {b:>4}: " + "  ".join(f"step {s:g} ms {v or 0:6.1f}" for s, v in
                                                 zip(AXES["step_ms"], row, strict=True)))  # fmt: skip
    target = 0.95 * best
    rows = {}
    for name, sampler, defaults in (("tuner (tpe, defaults first)", "tpe", [DEFAULTS]), ("random search", "random",
                                                                                          None)):  # fmt: skip
        needed = []
        for seed in range(args.seeds):
            measured = replay_study(land, sampler=sampler, seed=seed, defaults=defaults, stop_at=target)
            needed.append(trials_to_reach(measured, target, land.size))
        rows[name] = needed
        print(f"{name:<28} restarts to 95% of best: median {statistics.median(needed):5.1f}  "
              f"(seeds: {needed})  grid {land.size}")
    staged_costs(land, args.seeds, budget=20)
    tuner, rnd = (statistics.median(v) for v in rows.values())
    verdict = "beats" if tuner < rnd else "does NOT beat"
    print(f"tuner/random median restarts {tuner / rnd:.2f}: the tuner {verdict} random search at equal budgets "
          f"(grid {land.size}: the tuner needs {tuner / land.size:.0%} of it)")
    return 0


def _model(s: dict) -> BatchingModel:
    return BatchingModel(step_ms=s["step_ms"], step_per_seq_ms=s["step_per_seq_ms"], max_batch=s["max_batch"],
                         prefill_ms_per_token=s["prefill_ms_per_token"])  # fmt: skip


_SEARCHES: dict[tuple, tuple[float, float | None, float | None, float]] = {}


def _search(settings: dict, spec: CapacitySpec, start: float | None = None) -> tuple[float, float | None, float | None, float]:
    """(capacity, lo, hi, probe-seconds) of a simulated search on one configuration."""
    if start is not None:
        spec = spec.model_copy(update={"start_rate": start})
    key = (tuple(settings.values()), spec.precision, spec.probe_s, spec.start_rate)
    if key not in _SEARCHES:
        model = _model(settings)
        outcome, probes = search_sync(lambda a: simulate_probe(model, a, SLO_, spec, input_len=INPUT_LEN,
                                                               max_tokens=MAX_TOKENS, seed=0), spec)  # fmt: skip
        _SEARCHES[key] = (outcome.capacity, outcome.lo, outcome.hi, sum(p.seconds for p in probes))
    return _SEARCHES[key]


def staged_costs(land: Landscape, seeds: int, budget: int) -> None:
    """Probe-seconds of the first ``budget`` configurations the tuner visits: coarse first and precise only where the
    configuration could be the best (as ``hpload tune`` runs it) against the precise search on every one."""
    from hpload.scenarios.tuning import Tuner

    precise = SPEC.model_copy(update={"start_rate": 8.0})
    coarse = coarse_spec(precise)
    staged, full, refined = [], [], []
    for seed in range(seeds):
        tuner = Tuner(land.space(), sampler="tpe", seed=seed, study_name=f"staged-{seed}", defaults=[DEFAULTS])
        seen: set = set()
        best: float | None = None
        cost_staged = cost_full = 0.0
        n_refined = 0
        for _ in range(budget * 20):
            if len(seen) >= budget:
                break
            proposal = tuner.ask()
            known = tuner.remembered(proposal)
            if known is not None:
                tuner.tell(proposal, known)
                continue
            params = proposal.params
            seen.add(proposal.key)
            cap_c, lo, hi, sec_c = _search(params, coarse)
            cost_staged += sec_c
            value = cap_c
            if len(seen) == 1 or best is None or hi is None or hi > best:
                value, _lo, _hi, sec_p = _search(params, precise, start=max(lo or precise.start_rate,
                                                                            precise.min_rate))  # fmt: skip
                cost_staged += sec_p
                n_refined += 1
            cost_full += _search(params, precise)[3]
            best = value if best is None else max(best, value)
            tuner.tell(proposal, land.replay(params))
        staged.append(cost_staged)
        full.append(cost_full)
        refined.append(n_refined)
    print(f"probe-seconds for the first {budget} configurations the tuner visits (simulated, median of {seeds} "
          f"seeds): coarse first {statistics.median(staged):.0f} s (precise search on {statistics.median(refined):.0f}"
          f" of {budget}) vs precise on every one {statistics.median(full):.0f} s "
          f"({statistics.median(staged) / statistics.median(full):.2f}x)")


if __name__ == "__main__":
    raise SystemExit(main())
