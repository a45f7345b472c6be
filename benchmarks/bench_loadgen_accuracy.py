"""Load-generator accuracy: with the echo server set to a known TTFT and inter-token delay, how far are hpload's
measurements from the truth at 256 concurrent streams? Target: |measured - set| p99 < 1 ms.

    python benchmarks/bench_loadgen_accuracy.py [--streams 256] [--ttft-ms 50] [--itl-ms 20] [--tokens 32]

Server and client are pinned to separate cores. The echo server runs twice: with its ``--precise`` select() loop
(microsecond timer waits) and with asyncio's default epoll loop, which rounds every wait up to a whole millisecond,
so the second row shows how much of the error is the server's, not the client's. Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _taskset(core: str) -> list[str]:
    return ["taskset", "-c", core] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else []


def abs_error_percentiles(hist_dict: dict[str, object], set_ms: float) -> tuple[float, float, float]:
    """p50/p99/max of |value - set| in ms, from a histogram's counts (values at bucket midpoints)."""
    from hpload.loadgen.hist import LatencyHistogram

    hist = LatencyHistogram.from_dict(hist_dict)
    counts = np.ctypeslib.as_array(hist.hdr.counts)
    nz = np.nonzero(counts)[0]
    low = hist._lowest_values(nz.astype(np.int64)).astype(np.float64)
    high = np.array([hist.hdr.get_highest_equivalent_value(int(v)) for v in low], dtype=np.float64)
    err_ms = np.abs((low + high) / 2 / 1000 - set_ms)
    order = np.argsort(err_ms)
    cum = np.cumsum(counts[nz][order]) / counts[nz].sum()
    pick = [err_ms[order][np.searchsorted(cum, q)] for q in (0.5, 0.99)]
    return float(pick[0]), float(pick[1]), float(err_ms.max())


def run_client(url: str, args: argparse.Namespace, out: Path) -> None:
    cmd = [*_taskset("0"), sys.executable, __file__, "--role", "client", "--url", url, "--streams", str(args.streams),
           "--tokens", str(args.tokens), "--requests", str(args.requests), "--out", str(out)]  # fmt: skip
    subprocess.run(cmd, check=True, timeout=600)


def role_client(args: argparse.Namespace) -> None:
    from hpload.loadgen import LoadSpec, Target, WorkloadSpec, run_load

    load = LoadSpec(concurrency=args.streams, num_requests=args.requests, warmup_requests=args.streams)
    workload = WorkloadSpec(input_len=8, max_tokens=args.tokens)
    req = Path(args.out).with_suffix(".jsonl")
    result = asyncio.run(run_load(Target(args.url, "echo"), workload, load, requests_path=req))
    Path(args.out).write_text(json.dumps(result.to_dict()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--role")
    p.add_argument("--url")
    p.add_argument("--out")
    p.add_argument("--streams", type=int, default=256)
    p.add_argument("--ttft-ms", type=float, default=50.0)
    p.add_argument("--itl-ms", type=float, default=20.0)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--requests", type=int, default=1024)
    args = p.parse_args()
    if args.role == "client":
        role_client(args)
        return
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} (shared: tails follow it); echo on core 1, client on core 0; {args.streams} streams,"
          f" {args.requests} measured requests x {args.tokens} tokens; set ttft {args.ttft_ms} ms, itl {args.itl_ms} ms")  # fmt: skip
    print(f"{'echo loop':<12}{'ttft |err| p50':>16}{'p99':>8}{'max':>8}{'itl |err| p50':>16}{'p99':>8}{'max':>8}"
          f"{'client cpu%':>13}{'loop lag p99':>14}{'echo late mean':>16}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("--precise", ""):
            log = Path(tmp) / "echo.log"
            cmd = [*_taskset("1"), sys.executable, "-m", "hpload.servers.echo", "--port", "0", "--ttft-ms",
                   str(args.ttft_ms), "--itl-ms", str(args.itl_ms), "--output-tokens", str(args.tokens)]  # fmt: skip
            cmd += [mode] if mode else []
            with log.open("w") as fh:
                proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                url = ""
                for _ in range(300):
                    if m := re.search(r"http://127\.0\.0\.1:(\d+)", log.read_text()):
                        url = f"http://127.0.0.1:{m.group(1)}"
                        break
                    time.sleep(0.05)
                out = Path(tmp) / f"result{mode}.json"
                run_client(url, args, out)
            finally:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(10)
            raw = json.loads(out.read_text())
            ttft_err = np.abs(
                np.array(
                    [
                        json.loads(line)["ttft_ms"]
                        for line in out.with_suffix(".jsonl").read_text().splitlines()
                        if '"warmup": false' in line
                    ]  # fmt: skip
                )
                - args.ttft_ms
            )
            i50, i99, imax = abs_error_percentiles(raw["histograms"]["itl"], args.itl_ms)
            h = raw["health"]
            # The echo server's own view (/metrics): how late its first writes were, i.e. the server's share.
            echo_late_ms = (raw.get("server_metrics") or {}).get("ttft_mean_ms", float("nan")) - args.ttft_ms
            print(f"{mode.strip('-') or 'epoll':<12}{np.percentile(ttft_err, 50):>16.3f}{np.percentile(ttft_err, 99):>8.3f}"
                  f"{ttft_err.max():>8.3f}{i50:>16.3f}{i99:>8.3f}{imax:>8.3f}{h['cpu_percent']:>13.0f}"
                  f"{h['loop_lag_p99_ms']:>14.2f}{echo_late_ms:>16.3f}")  # fmt: skip
            if raw["summary"]["failed"]:
                print(f"  failed: {raw['summary']['failed']} {raw['errors']}")


if __name__ == "__main__":
    main()
