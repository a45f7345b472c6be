"""Tuner sample efficiency on the research's recorded A100 landscapes (../shared/landscapes/infpop-a100).

For each engine (vLLM, autohf = HF pipelines), each model's 11x4 (vLLM) or 9x4 (autohf) grid of batch size x GPU
count, and each seed, a sampler tunes against the recording (replay objective, engine defaults measured first)
until a measured point reaches 98% of the landscape's best feasible throughput. Printed: the median, over models
and seeds, of the measurements that took, as a fraction of the grid's size; lower is better. Repeated proposals
are answered from memory and not counted, exactly as in a live study. Target: <= 30% and better than random.

    python benchmarks/bench_tuner.py                      # TPE, GP, random; both engines; 10 seeds
    python benchmarks/bench_tuner.py --samplers tpe,random --seeds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from multiprocessing import Pool
from pathlib import Path

# The GP sampler runs torch; one thread per worker process avoids oversubscribing a small machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")

ENGINE_DEFAULTS = {
    # vLLM's default max_num_seqs (256) on one GPU; HF pipelines default to batch_size 1 on one GPU.
    "vLLM": {"batch_size": 256, "gpus": 1},
    "autohf": {"batch_size": 1, "gpus": 1},
}
TARGET = 0.98

_landscapes: dict[str, dict[str, object]] = {}


def _init(directory: str) -> None:
    import torch

    torch.set_num_threads(1)
    from hpload.scenarios.landscape import load_infpop

    for engine in ENGINE_DEFAULTS:
        _landscapes[engine] = dict(load_infpop(directory, engine))


def _one(job: tuple[str, str, str, int, bool]) -> tuple[str, str, str, int, float, int]:
    from hpload.scenarios.landscape import Landscape, replay_study, trials_to_reach

    engine, model, sampler, seed, use_defaults = job
    landscape = _landscapes[engine][model]
    assert isinstance(landscape, Landscape)
    best = landscape.best()
    assert best is not None
    defaults = [ENGINE_DEFAULTS[engine]] if use_defaults else None
    measured = replay_study(landscape, sampler=sampler, seed=seed, defaults=defaults, stop_at=TARGET * best)
    trials = trials_to_reach(measured, TARGET * best, landscape.size)
    return engine, model, sampler, seed, trials / landscape.size, trials


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", help="infpop-a100 directory (default: ../shared/landscapes/infpop-a100)")
    parser.add_argument("--samplers", default="tpe,gp,random")
    parser.add_argument("--engines", default="vLLM,autohf")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--workers", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    parser.add_argument("--no-defaults", action="store_true", help="do not measure the engine defaults first")
    args = parser.parse_args()

    from hpload.scenarios.landscape import default_infpop_dir, load_infpop

    directory = str(Path(args.dir) if args.dir else default_infpop_dir())
    engines = args.engines.split(",")
    samplers = args.samplers.split(",")
    jobs = [
        (engine, model, sampler, seed, not args.no_defaults)
        for engine in engines
        for sampler in samplers
        for model in load_infpop(directory, engine)
        for seed in range(args.seeds)
    ]
    started = time.perf_counter()
    rows: dict[tuple[str, str], list[float]] = {}
    elapsed: dict[tuple[str, str], float] = {}
    with Pool(args.workers, initializer=_init, initargs=(directory,)) as pool:
        for engine, _model, sampler, _seed, fraction, _trials in pool.imap_unordered(_one, jobs, chunksize=2):
            rows.setdefault((engine, sampler), []).append(fraction)
            elapsed[(engine, sampler)] = time.perf_counter() - started
    print(f"tuner efficiency: measurements to reach {TARGET:.0%} of each landscape's best feasible point, "
          f"as a fraction of the grid (median over models x {args.seeds} seeds; lower is better)")
    print(f"{'engine':<8} {'grid':>4} {'sampler':<8} {'median':>7} {'mean':>6} {'p90':>6} {'<=30%':>6} {'studies':>7}")
    for engine in engines:
        size = next(iter(load_infpop(directory, engine).values())).size
        for sampler in samplers:
            values = sorted(rows.get((engine, sampler), []))
            if not values:
                continue
            p90 = values[min(len(values) - 1, int(0.9 * len(values)))]
            within = sum(v <= 0.30 for v in values) / len(values)
            print(f"{engine:<8} {size:>4} {sampler:<8} {statistics.median(values):>7.1%} "
                  f"{statistics.mean(values):>6.1%} {p90:>6.1%} {within:>6.0%} {len(values):>7}")
    print(f"({time.perf_counter() - started:.0f} s, {args.workers} workers, machine: {os.cpu_count()} CPUs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
