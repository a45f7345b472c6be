"""Shards: requests/s of one closed-loop load sent by 1, 2 and 3 shards (``hpload run --shard I/N``, joined by
``hpload merge``) against one echo server, with the ratio to one shard.

    python benchmarks/bench_shards.py [--concurrency 48] [--requests 3000] [--tokens 16] [--repeats 2]

Every shard is a separate hpload process told to start at one instant (``--start-at``); the merged result's
request throughput (completed / first send to last reply on the shared timeline) is the figure, beside the sum of
the shards' own rates. The echo server answers after 1 ms with tokens 1 ms apart, fast enough that the clients,
not the server, limit the rate. On a machine with as many free cores as shards plus one, the ratio shows how far
shards add client capacity; on a small machine they share its cores with each other and the server, so the ratio
shows only the cost or gain of splitting the load there. Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HPLOAD = str(Path(sys.executable).with_name("hpload"))
START_MARGIN_S = 8.0


def start_echo(tokens: int, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    cmd = [sys.executable, "-m", "hpload.servers.echo", "--port", "0", "--ttft-ms", "1", "--itl-ms", "1",
           "--output-tokens", str(tokens)]  # fmt: skip
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)  # noqa: S603
    for _ in range(300):
        m = re.search(r"http://127\.0\.0\.1:(\d+)", log.read_text())
        if m:
            return proc, f"http://127.0.0.1:{m.group(1)}"
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(log.read_text())


def run_shards(url: str, n: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    start_at = time.time() + START_MARGIN_S
    dirs = [work / f"n{n}-{time.monotonic_ns()}-s{i}" for i in range(n)]
    load = ["--concurrency", str(args.concurrency), "--num-requests", str(args.requests), "--max-tokens",
            str(args.tokens), "--set", "load.warmup_s=0", "--set", "workload.input_len=8"]  # fmt: skip
    procs = [
        subprocess.Popen(  # noqa: S603
            [HPLOAD, "run", "--server", url, *load, "--quiet", "--shard", f"{i}/{n}", "--start-at", f"{start_at:.3f}",
             "--results", str(d)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        for i, d in enumerate(dirs)
    ]
    for p in procs:
        _, err = p.communicate(timeout=600)
        if p.returncode != 0:
            raise RuntimeError(err.decode()[-2000:])
    out = work / f"merged-n{n}-{time.monotonic_ns()}"
    subprocess.run([HPLOAD, "merge", *map(str, dirs), "--results", str(out)], check=True,  # noqa: S603
                   capture_output=True, timeout=120)
    info = json.loads((out / "shards.json").read_text())
    point = next((out / "points").glob("*.point.json"))
    summary = json.loads(point.read_text())["summary"]
    return {
        "req_s": float(summary["request_throughput"]),
        "sum_req_s": float(info["achieved_rate_sum"]),
        "completed": int(summary["completed"]),
        "flagged": bool(info["flagged"]),
        "cpu": [round(float(s["health"].get("cpu_percent", 0.0))) for s in info["shards"]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=48)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--shards", type=int, nargs="+", default=[1, 2, 3])
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hpload-bench-shards-"))
    echo, url = start_echo(args.tokens, work / "echo.log")
    rows: dict[int, list[dict[str, Any]]] = {n: [] for n in args.shards}
    try:
        for _ in range(args.repeats):
            for n in args.shards:  # interleaved, so a neighbour's burst does not land on one row only
                rows[n].append(run_shards(url, n, args, work))
    finally:
        echo.kill()
        echo.wait(10)
    print(f"machine: {os.cpu_count()} cores; echo server and all shards on the same host; load: closed loop "
          f"concurrency {args.concurrency}, {args.requests} requests x {args.tokens} tokens, echo ttft 1 ms itl 1 ms; "
          f"median of {args.repeats}")
    print(f"{'shards':>6} {'req/s':>9} {'ratio':>6} {'sum of shard req/s':>19} {'completed':>9} {'client cpu % per shard':>24}"
          "  flagged")
    base = statistics.median(r["req_s"] for r in rows[args.shards[0]])
    for n in args.shards:
        req = statistics.median(r["req_s"] for r in rows[n])
        total = statistics.median(r["sum_req_s"] for r in rows[n])
        last = rows[n][-1]
        print(f"{n:>6} {req:>9.1f} {req / base:>6.2f} {total:>19.1f} {last['completed']:>9} "
              f"{' '.join(map(str, last['cpu'])):>24}  {any(r['flagged'] for r in rows[n])}")


if __name__ == "__main__":
    main()
