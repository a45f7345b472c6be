"""Bounded soak: minutes of load at the client's own capacity against the echo server; memory must stay flat.

    python benchmarks/soak.py [--minutes 5] [--sample-s 15] [--concurrency N]

A short calibration first picks the concurrency with the most completed requests/s (the client, not the echo
server, is the limit at 1 ms TTFT / 1 ms ITL), unless ``--concurrency`` is given. The soak then runs one closed-loop
run for ``--minutes`` and samples the resident memory (RSS) of the client (this process) and of the echo server
every ``--sample-s`` seconds, beside the request counts. Verdict: RSS growth from the first to the last quarter of
the soak (medians, after the first sample, which includes start-up growth) under 10 % and under 1 MB/min for both
processes; the exit code is 0 on pass, 1 on fail. Numbers are noisy on a shared machine; the growth is what matters.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import psutil

from hpload.loadgen import LoadSpec, Target, WorkloadSpec, run_load
from hpload.loadgen.snapshot import Snapshot
from hpload.servers import EchoSettings, Server, make_server

MB = 1024 * 1024
GROWTH_LIMIT = 0.10
SLOPE_LIMIT_MB_MIN = 1.0
WORKLOAD = WorkloadSpec(input_len=16, max_tokens=16, num_prompts=200)


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.Error:
            pass
    return total / MB


async def calibrate(target: Target, levels: list[int], seconds: float) -> int:
    best, best_rate = levels[0], -1.0
    for level in levels:
        result = await run_load(target, WORKLOAD, LoadSpec(concurrency=level, duration_s=seconds, warmup_s=1.0))
        rate = float(result.summary.get("request_throughput") or 0.0)
        print(f"calibrate: concurrency {level:>4}: {rate:8.1f} req/s, failed {result.summary.get('failed', 0)}")
        if rate > best_rate:
            best, best_rate = level, rate
    return best


class Sampler:
    """Samples RSS and progress every ``every_s`` while the soak runs (from the latest snapshot)."""

    def __init__(self, server: Server, every_s: float) -> None:
        self.server = server
        self.every_s = every_s
        self.latest: Snapshot | None = None
        self.rows: list[tuple[float, float, float, int, float]] = []  # t_s, client MB, server MB, done, req/s
        self.client = psutil.Process()

    def observe(self, snap: Snapshot) -> None:
        self.latest = snap

    async def run(self, t0: float) -> None:
        last_done, last_t = 0, t0
        while True:
            await asyncio.sleep(self.every_s)
            now = time.monotonic()
            done = self.latest.requests_completed if self.latest else 0
            rate = (done - last_done) / (now - last_t)
            last_done, last_t = done, now
            row = (now - t0, self.client.memory_info().rss / MB, rss_mb(self.server.pids()), done, rate)
            self.rows.append(row)
            print(f"{row[0]:7.0f} s  client {row[1]:7.1f} MB  server {row[2]:6.1f} MB  completed {row[3]:>9}  "
                  f"{row[4]:7.1f} req/s", flush=True)  # fmt: skip


def verdict(name: str, t_s: list[float], mb: list[float]) -> bool:
    quarter = max(1, len(mb) // 4)
    head, tail = statistics.median(mb[1 : 1 + quarter] or mb[:1]), statistics.median(mb[-quarter:])
    growth = (tail - head) / head if head else 0.0
    slope = statistics.linear_regression(t_s[1:], mb[1:]).slope * 60 if len(mb) > 2 else 0.0
    ok = growth < GROWTH_LIMIT and slope < SLOPE_LIMIT_MB_MIN
    print(f"{name:<7} RSS first quarter {head:7.1f} MB, last quarter {tail:7.1f} MB, growth {growth:+6.1%}, "
          f"slope {slope:+.2f} MB/min -> {'flat' if ok else 'GROWING'}")  # fmt: skip
    return ok


async def soak(minutes: float, sample_s: float, concurrency: int | None) -> bool:
    workdir = Path(tempfile.mkdtemp(prefix="hpload-soak-"))
    async with make_server(EchoSettings(ttft_ms=1, itl_ms=1, output_tokens=16), workdir=workdir) as server:
        target = Target(server.base_url, server.model, label="echo")
        level = concurrency or await calibrate(target, [16, 64, 128], 6.0)
        print(f"soak: {minutes:g} min at concurrency {level} against echo (ttft 1 ms, itl 1 ms, 16 tokens); "
              f"machine: {psutil.cpu_count()} CPUs")  # fmt: skip
        sampler = Sampler(server, sample_s)
        t0 = time.monotonic()
        task = asyncio.create_task(sampler.run(t0))
        try:
            result = await run_load(target, WORKLOAD, LoadSpec(concurrency=level, duration_s=minutes * 60),
                                    observer=sampler.observe, snapshot_interval_s=1.0)  # fmt: skip
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    s = result.summary
    print(f"\nrequests: {s['completed']} completed, {s['failed']} failed ({dict(result.errors)}); "
          f"{float(s['request_throughput']):.1f} req/s, {float(s['output_throughput']):.0f} tok/s; "
          f"p99 ttft {float(s.get('p99_ttft_ms') or 0):.2f} ms")
    h = result.health
    print(f"client health: CPU {float(h.get('cpu_percent') or 0):.0f} %, event-loop lag p99 "
          f"{float(h.get('loop_lag_p99_ms') or 0):.1f} ms, bottleneck {h.get('bottleneck')} (expected at capacity)")
    rows = sampler.rows
    if len(rows) < 4:
        print("too few samples for a verdict; run longer or sample more often")
        return False
    t_s = [r[0] for r in rows]
    ok_client = verdict("client", t_s, [r[1] for r in rows])
    ok_server = verdict("server", t_s, [r[2] for r in rows])
    ok = ok_client and ok_server and s["failed"] == 0
    print("PASS: memory flat" if ok else "FAIL")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--sample-s", type=float, default=15.0)
    parser.add_argument("--concurrency", type=int, default=None, help="skip calibration and use this")
    args = parser.parse_args()
    return 0 if asyncio.run(soak(args.minutes, args.sample_s, args.concurrency)) else 1


if __name__ == "__main__":
    raise SystemExit(main())
