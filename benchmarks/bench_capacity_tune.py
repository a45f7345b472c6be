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

Part 2 (``--vllm-grid``, on by default when the file exists): the same figures over a grid recorded on the vLLM CPU
server (benchmarks/record_vllm_capacity_grid.py: max_num_seqs x max_num_batched_tokens x chunked prefill, the
capacity at each point measured by ``find_capacity``), replayed. A recorded grid is one measurement per point, noise
included: the replay ranks the search strategies on that recording, not vLLM's settings in general.

    .venv/bin/python benchmarks/bench_capacity_tune.py [--seeds 10] [--vllm-grid CSV | --vllm-only]
"""

from __future__ import annotations

import argparse
import csv
import itertools
import statistics
import sys
import time
from pathlib import Path

from hpload.loadgen.specs import SLO
from hpload.scenarios.capacity import CapacitySpec, search_sync
from hpload.scenarios.capacity_sim import simulate_probe, true_capacity
from hpload.scenarios.capacity_tune import coarse_spec
from hpload.scenarios.landscape import Landscape, replay_study, trials_to_reach
from hpload.scenarios.space import Scalar
from hpload.servers.echo.batching import BatchingModel

AXES: dict[str, list] = {
    "max_batch": [2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128],
    "step_ms": [4.0, 8.0, 12.0, 16.0],
    "step_per_seq_ms": [0.25, 0.5, 1.0],
    "prefill_ms_per_token": [0.01, 0.04],
}
DEFAULTS: dict[str, Scalar] = {"max_batch": 16, "step_ms": 8.0, "step_per_seq_ms": 0.5, "prefill_ms_per_token": 0.04}
SLO_ = SLO(ttft_p99_ms=300, tpot_p99_ms=22)
SPEC = CapacitySpec(probe_s=10, warmup_s=2, precision=0.05, replicates=0)
INPUT_LEN, MAX_TOKENS = 128, 32
VLLM_GRID = Path(__file__).resolve().parent / "data" / "vllm-cpu-capacity-grid.csv"
VLLM_AXES = ("max_num_seqs", "max_num_batched_tokens", "enable_chunked_prefill")


def landscape() -> Landscape:
    points: dict[tuple[Scalar, ...], float | None] = {}
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
    p.add_argument("--vllm-grid", type=Path, default=VLLM_GRID, help="a grid recorded by record_vllm_capacity_grid.py")
    p.add_argument("--vllm-only", action="store_true", help="only the recorded vLLM CPU grid")
    args = p.parse_args()
    print(f"python {sys.version.split()[0]}")
    if not args.vllm_only:
        echo_figures(args.seeds)
    if args.vllm_grid.is_file():
        vllm_figures(args.vllm_grid, args.seeds)
    elif args.vllm_only:
        print(f"{args.vllm_grid}: not found; record it with benchmarks/record_vllm_capacity_grid.py")
        return 2
    return 0


def echo_figures(seeds: int) -> None:
    t0 = time.monotonic()
    land = landscape()
    best = land.best()
    assert best
    best_key = max(land.points, key=lambda k: land.points[k] or 0.0)
    default = land.value(DEFAULTS) or 0.0
    zero = sum(1 for v in land.points.values() if (v or 0.0) < 1.0)
    print(f"calibrated echo landscape computed in {time.monotonic() - t0:.0f} s")
    print(f"grid {land.size} points ({' x '.join(f'{k} {len(v)}' for k, v in AXES.items())}); SLO p99 TTFT <= 300 ms, p99 TPOT <= 22 ms; "
          f"input {INPUT_LEN}, output {MAX_TOKENS} tokens")
    print(f"best capacity {best:.1f} req/s at {dict(zip(AXES, best_key, strict=True))}; defaults {DEFAULTS} "
          f"{default:.1f} req/s; {zero} points under 1 req/s (cliffs: the TPOT limit met at almost no rate)")
    for b in AXES["max_batch"]:
        row = [land.value({"max_batch": b, "step_ms": s, "step_per_seq_ms": 0.5, "prefill_ms_per_token": 0.01})
               for s in AXES["step_ms"]]  # fmt: skip
        print(f"  max_batch {b:>4}: " + "  ".join(f"step {s:g} ms {v or 0:6.1f}" for s, v in
                                                 zip(AXES["step_ms"], row, strict=True)))  # fmt: skip
    rows = compare(land, seeds, {"tuner (tpe, defaults first)": ("tpe", [DEFAULTS]), "random search": ("random", None)})
    staged_costs(land, seeds, budget=20)
    verdict(land, *rows.values())


def compare(land: Landscape, seeds: int, searches: dict[str, tuple[str, list[dict[str, Scalar]] | None]]) -> dict[str, list[int]]:
    """Restarts to first reach 95% of the best, per seed, for each (sampler, defaults) at equal budgets."""
    target = 0.95 * (land.best() or 0.0)
    rows = {}
    for name, (sampler, defaults) in searches.items():
        needed = []
        for seed in range(seeds):
            measured = replay_study(land, sampler=sampler, seed=seed, defaults=defaults, stop_at=target)
            needed.append(trials_to_reach(measured, target, land.size))
        rows[name] = needed
        print(f"{name:<28} restarts to 95% of best: median {statistics.median(needed):5.1f}  "
              f"(seeds: {needed})  grid {land.size}")
    return rows


def verdict(land: Landscape, tuner_runs: list[int], random_runs: list[int]) -> None:
    tuner, rnd = statistics.median(tuner_runs), statistics.median(random_runs)
    word = "beats" if tuner < rnd else "does NOT beat"
    print(f"tuner/random median restarts {tuner / rnd:.2f}: the tuner {word} random search at equal budgets "
          f"(grid {land.size}: the tuner needs {tuner / land.size:.0%} of it)")


def load_vllm_grid(path: Path) -> tuple[Landscape, list[dict[str, str]], list[str]]:
    """The recorded CSV as a landscape (capacity per point), its rows and its header comment."""
    lines = path.read_text().splitlines()
    comments = [line for line in lines if line.startswith("#")]
    rows = list(csv.DictReader(line for line in lines if not line.startswith("#")))

    def parse(axis: str, text: str) -> int | bool:
        return text == "True" if axis == "enable_chunked_prefill" else int(text)

    axes: dict[str, list[Scalar]] = {a: sorted({parse(a, r[a]) for r in rows}) for a in VLLM_AXES}
    points: dict[tuple[Scalar, ...], float | None] = {}
    for r in rows:
        cap = r["capacity_rps"]
        points[tuple(parse(a, r[a]) for a in VLLM_AXES)] = float(cap) if cap not in ("", "None") else None
    land = Landscape("vllm-cpu-grid", axes, points)
    if len(points) != land.size:
        print(f"{path}: {len(points)} of {land.size} points recorded; the missing ones replay as failed")
    return land, rows, comments


def vllm_figures(path: Path, seeds: int) -> None:
    land, rows, comments = load_vllm_grid(path)
    best = land.best() or 0.0
    target = 0.95 * best
    print(f"\nrecorded vLLM CPU grid {path.name} ({land.size} points: "
          f"{' x '.join(f'{k} {len(v)}' for k, v in land.axes.items())})")
    for line in comments:
        print(f"  {line}")
    print("| max_num_seqs | max_num_batched_tokens | chunked prefill | capacity req/s | interval [lo, hi) | probes | "
          "load avg |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        cap = float(r["capacity_rps"])
        mark = " **best**" if cap == best else (" (>= 95%)" if cap >= target else "")
        print(f"| {r['max_num_seqs']} | {r['max_num_batched_tokens']} | {r['enable_chunked_prefill'].lower()} | "
              f"{cap:.3g}{mark} | [{r['lo']}, {r['hi']}) | {r['probes']} | {r['load_avg_1m']} |")
    hits = sum(1 for v in land.points.values() if v is not None and v >= target)
    print(f"best {best:.3g} req/s; {hits} of {land.size} points reach 95% of it ({target:.3g} req/s); random search "
          f"without repeats needs (N + 1) / (k + 1) = {(land.size + 1) / (hits + 1):.2f} restarts on average")
    # A live study over these settings leaves them to vLLM unless the server names them, so the engine defaults are
    # measured first outside the grid (one restart that both strategies would pay): the tuner starts from TPE alone.
    searches: dict[str, tuple[str, list[dict[str, Scalar]] | None]] = {"tuner (tpe, as hpload tune)": ("tpe", None),
                                                           "random search": ("random", None)}  # fmt: skip
    tuner_rows = compare(land, seeds, searches)
    verdict(land, *tuner_rows.values())
    # Ten seeds move a median on eight points by whole restarts; replays are cheap, so a steadier figure beside it.
    many = 200
    means = {name: statistics.mean(trials_to_reach(replay_study(land, sampler=sampler, seed=seed, defaults=d,
                                                                stop_at=target), target, land.size)
                                   for seed in range(many)) for name, (sampler, d) in searches.items()}  # fmt: skip
    print(f"over {many} seeds, mean restarts to 95% of best: " + ", ".join(f"{k} {v:.2f}" for k, v in means.items()))


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
