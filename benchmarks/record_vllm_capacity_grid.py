"""Record a small capacity grid on the vLLM CPU server, for replaying tuners against (bench_capacity_tune.py).

Each point of max_num_seqs x max_num_batched_tokens x enable_chunked_prefill is one vLLM start on the tiny model
(through hpload's own launcher, ``find_capacity``'s ServerKeeper, which stops it again) and one capacity search
with short probes and a generous SLO. vLLM 0.32 refuses max_num_batched_tokens below max_model_len without chunked
prefill (and below max_num_seqs), so the token axis starts at max_model_len: every point of the grid can start.

Rows are appended to the CSV as each point finishes, so an interrupted recording keeps what it has; a rerun skips
the points already in the CSV, and the point it was in replays its finished probes from ``--results``.

    nohup .venv/bin/python benchmarks/record_vllm_capacity_grid.py > /tmp/grid.log 2>&1 &
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import datetime as dt
import itertools
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from hpload.loadgen.specs import SLO, WorkloadSpec
from hpload.scenarios.capacity import CapacitySpec
from hpload.scenarios.capacity_run import SearchSettings, find_capacity
from hpload.scenarios.results import ResultStore
from hpload.servers import VllmSettings

ROOT = Path(__file__).resolve().parent.parent
CSV_PATH = ROOT / "benchmarks" / "data" / "vllm-cpu-capacity-grid.csv"
MODEL = Path.home() / ".cache" / "hpload" / "models" / "tiny-llama"
MAX_MODEL_LEN = 512
AXES: dict[str, list] = {
    "max_num_seqs": [2, 8],
    "max_num_batched_tokens": [512, 2048],
    "enable_chunked_prefill": [False, True],
}
# 256-token prompts: a 512-token budget admits two prefills per step, 2048 admits eight, so the token axis can matter
# where max_num_seqs lets more than two requests in.
WORKLOAD = WorkloadSpec(input_len=256, max_tokens=32, ignore_eos=True)
SLO_ = SLO(ttft_p99_ms=3000, tpot_p99_ms=250)
SPEC = CapacitySpec(start_rate=2.0, min_rate=0.25, max_rate=64.0, probe_s=6, warmup_s=1.5, precision=0.15,
                    replicates=0, drain_timeout_s=15, idle_timeout_s=30)  # fmt: skip
FIELDS = [*AXES, "capacity_rps", "lo", "hi", "reason", "probes", "probe_seconds", "wall_s", "load_avg_1m",
          "recorded_utc"]  # fmt: skip


def header() -> list[str]:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    from hpload.scenarios.capacity_run import versions

    vllm = versions().get("vllm", "unknown")
    return [
        f"# vLLM CPU capacity grid, recorded by benchmarks/record_vllm_capacity_grid.py on "
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d}",
        f"# machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, shared with other work (see "
        "load_avg_1m); python {0}; vLLM {1}; hpload commit {2}".format(sys.version.split()[0], vllm, commit.strip()),
        f"# server: vllm tiny-llama ({MODEL.name}), dtype float32, max_model_len {MAX_MODEL_LEN}; other settings "
        "vLLM's defaults",
        f"# workload: synthetic prompts of {WORKLOAD.input_len} tokens, {WORKLOAD.max_tokens} output tokens "
        "(ignore_eos), Poisson arrivals, seed 0",
        f"# SLO: p99 TTFT <= {SLO_.ttft_p99_ms:g} ms, p99 TPOT <= {SLO_.tpot_p99_ms:g} ms",
        f"# capacity search: start {SPEC.start_rate:g} req/s, range [{SPEC.min_rate:g}, {SPEC.max_rate:g}], "
        f"probes {SPEC.probe_s:g} s after {SPEC.warmup_s:g} s warm-up, scouts {SPEC.scout_fraction:g} of that, "
        f"precision {SPEC.precision:.0%}, replicates {SPEC.replicates}, early stop {SPEC.early_stop}",
        "# capacity_rps is the search's lo (the highest passing rate below the first failure); 0 = failed at min_rate",
    ]


def done_points(path: Path) -> set[tuple[str, ...]]:
    if not path.is_file():
        return set()
    rows = csv.DictReader(line for line in path.read_text().splitlines() if not line.startswith("#"))
    return {tuple(row[axis] for axis in AXES) for row in rows}


def append(path: Path, row: dict) -> None:
    fresh = not path.is_file() or path.stat().st_size == 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", newline="") as handle:
        if fresh:
            handle.write("\n".join(header()) + "\n")
        writer = csv.DictWriter(handle, FIELDS)
        if fresh:
            writer.writeheader()
        writer.writerow(row)
        handle.flush()
        os.fsync(handle.fileno())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--csv", type=Path, default=CSV_PATH)
    p.add_argument("--results", type=Path, default=ROOT / "results" / "vllm-capacity-grid",
                   help="probes and capacity records (a rerun continues an interrupted point from here)")
    p.add_argument("--only", action="append", default=[], metavar="AXIS=VALUE",
                   help="record only the points with this value (a repeat of part of the grid, to see its noise)")
    args = p.parse_args()
    done = done_points(args.csv)
    points = [dict(zip(AXES, combo, strict=True)) for combo in itertools.product(*AXES.values())]
    for only in args.only:
        axis, _, value = only.partition("=")
        if axis not in AXES:
            p.error(f"--only {only}: no axis {axis!r}; fix: one of {', '.join(AXES)}")
        points = [pt for pt in points if str(pt[axis]) == value]
    for n, point in enumerate(points, 1):
        key = tuple(str(point[axis]) for axis in AXES)
        if key in done:
            print(f"point {n}/{len(points)} {point}: already recorded", flush=True)
            continue
        label = "vllm-" + "-".join(f"{v}" for v in point.values()).lower()
        server = VllmSettings(label=label, model=str(MODEL), dtype="float32", max_model_len=MAX_MODEL_LEN, **point)
        load = os.getloadavg()[0]
        t0 = time.monotonic()
        print(f"point {n}/{len(points)} {point}: starting (load {load:.1f})", flush=True)
        record = asyncio.run(find_capacity(server, SearchSettings(workload=WORKLOAD, slo=SLO_, spec=SPEC, seed=0),
                                           ResultStore(args.results)))  # fmt: skip
        wall = time.monotonic() - t0
        iv = record["interval"]
        row = {**point, "capacity_rps": round(record["capacity_rps"], 3), "lo": iv["lo"], "hi": iv["hi"],
               "reason": record["reason"], "probes": len(record["probes"]),
               "probe_seconds": round(record["probe_seconds"], 1), "wall_s": round(wall, 1),
               "load_avg_1m": round(load, 2), "recorded_utc": f"{dt.datetime.now(dt.UTC):%H:%M:%S}"}  # fmt: skip
        append(args.csv, row)
        print(f"point {n}/{len(points)} {point}: capacity {row['capacity_rps']} req/s [{iv['lo']}, {iv['hi']}) "
              f"{row['probes']} probes, {wall:.0f} s; {record['reason']}", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
