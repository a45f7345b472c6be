"""Trace-replay fidelity: does hpload send a trace's requests when the trace says?

    python benchmarks/bench_replay.py [--rates 100,500] [--seconds 10] [--shape 0.5]

A bursty trace (gamma inter-arrivals of shape ``--shape``, so gaps vary far more than Poisson's) is written in
hpload's JSONL at each mean rate and replayed against the echo server (1 ms TTFT, 1 ms per token, 4 tokens), the
server pinned to core 1 and the client to core 0. Printed per rate: schedule delay (send - trace time) p50/p99/max,
requested vs achieved rate, and the two-sample Kolmogorov-Smirnov statistic between the trace's inter-arrival gaps
and the realised ones (0 = the same distribution). Beside it, the same figures for hpload's own Poisson open loop at
the same rate (the baseline: the scheduler replay shares), and the ratio replay/baseline of the p99 delay. The
replay also runs on the echo server's microsecond-timer event loop ("precise"), to show what asyncio's
millisecond-rounded waits cost.
Target: schedule delay p99 < 2 ms at 500 req/s. Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from bench_loadgen_capacity import start_echo  # the script's folder is on sys.path

SERVER_CORE, CLIENT_CORE = "1", "0"


def _taskset(core: str) -> list[str]:
    return ["taskset", "-c", core] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else []


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)


def write_trace(path: Path, rate: float, seconds: float, shape: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    gaps = rng.gamma(shape, 1.0 / (shape * rate), int(rate * seconds * 1.2))
    times = np.cumsum(gaps) - gaps[0]
    times = times[times < seconds]
    with path.open("w") as fh:
        for t in times:
            fh.write(json.dumps({"t_s": float(t), "input_len": 8, "output_len": 4}) + "\n")


def role_client(args: argparse.Namespace) -> None:
    from hpload.loadgen import LoadSpec, Target, WorkloadSpec, run_load

    if args.trace:
        workload = WorkloadSpec(source="trace", path=args.trace, max_context=4096)
        load = LoadSpec(replay=True, max_concurrency=512)
    else:
        workload = WorkloadSpec(input_len=8, max_tokens=4)
        load = LoadSpec(rate=args.rate, arrival="poisson", duration_s=args.seconds, max_concurrency=512)
    coro = run_load(Target(args.url, "echo"), workload, load)
    if args.precise:
        # The echo server's microsecond-timer loop: asyncio's default epoll loop rounds every wait up to a whole ms.
        from hpload.servers.echo.server import _precise_selector, _tight_timer_slack

        _tight_timer_slack()
        with asyncio.Runner(loop_factory=lambda: asyncio.SelectorEventLoop(_precise_selector())) as runner:
            result = runner.run(coro)
    else:
        result = asyncio.run(coro)
    out = {"sends": result.config.get("workload_stats", {}).get("sends", {}), "completed": result.summary["completed"],
           "failed": result.summary["failed"], "health": result.health}  # fmt: skip
    Path(args.out).write_text(json.dumps(out))


def run_client(url: str, out: Path, rate: float, seconds: float, trace: Path | None, precise: bool) -> dict[str, Any]:
    cmd = [*_taskset(CLIENT_CORE), sys.executable, __file__, "--role", "client", "--url", url, "--out", str(out),
           "--rate", str(rate), "--seconds", str(seconds)]  # fmt: skip
    cmd += ["--trace", str(trace)] if trace else []
    cmd += ["--precise"] if precise else []
    subprocess.run(cmd, check=True, timeout=seconds * 4 + 60)
    return dict(json.loads(out.read_text()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--role", default="main")
    p.add_argument("--url")
    p.add_argument("--out")
    p.add_argument("--trace")
    p.add_argument("--rate", type=float, default=100.0)
    p.add_argument("--rates", default="100,500")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--shape", type=float, default=0.5)
    p.add_argument("--precise", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.role == "client":
        role_client(args)
        return
    print(f"machine: {os.cpu_count()} cores, 1-min load average {os.getloadavg()[0]:.1f} before"
          f" the runs (other work on the machine delays the client);"
          f" echo on core {SERVER_CORE}, client on core {CLIENT_CORE}; trace gamma shape {args.shape}")  # fmt: skip
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        proc, url = start_echo(4, 1, tmp / "echo.log")
        try:
            head = (f"{'rate':>6} {'run':>8} {'sent':>6} {'achieved':>9} {'delay p50':>10} {'p99':>8} {'max':>8}"
                    f" {'KS gaps':>8}")  # fmt: skip
            print(head)
            for rate in (float(r) for r in args.rates.split(",")):
                trace = tmp / f"trace{rate:g}.jsonl"
                write_trace(trace, rate, args.seconds, args.shape, seed=int(rate))
                rows = {}
                runs = (("replay", trace, False), ("precise", trace, True), ("poisson", None, False))
                for name, tr, precise in runs:
                    got = run_client(url, tmp / f"{name}{rate:g}.json", rate, args.seconds, tr, precise)
                    s = got["sends"]
                    d = s["schedule_delay_ms"]
                    rows[name] = d["p99"]
                    print(f"{rate:6g} {name:>8} {s['sent']:6d} {s['achieved_rate']:9.1f} {d['p50']:10.3f}"
                          f" {d['p99']:8.3f} {d['max']:8.2f} {s['interarrival_ks']:8.4f}"
                          f"  (requested {s['requested_rate']:.1f}/s, failed {got['failed']})")  # fmt: skip
                ratio = rows["replay"] / rows["poisson"] if rows["poisson"] else float("nan")
                best = min(rows["replay"], rows["precise"])
                verdict = "meets" if best < 2.0 else "misses"
                print(f"{rate:6g}  replay/poisson delay p99 = {ratio:.2f}; best replay p99 {best:.3f} ms"
                      f" {verdict} the 2 ms target")  # fmt: skip
        finally:
            stop(proc)


if __name__ == "__main__":
    main()
