"""Load-generator accuracy: with the echo server set to a known TTFT and inter-token delay, how far are hpload's
measurements from the truth at 256 concurrent streams? Target: |measured - set| p99 < 1 ms.

    python benchmarks/bench_loadgen_accuracy.py [--streams 256] [--ttft-ms 50] [--itl-ms 20] [--tokens 32]

"Set" is what the echo server was told; what it did is not quite that: one Python process on one core writes 256
chunks one after another when 256 streams are due at once. So the echo server also traces when it really wrote each
chunk (``--trace``: monotonic ns, the same clock as the client's on this host), the client keeps per-request
records (request id, start, every inter-token gap), and the two are joined by ``X-Request-Id``. Three figures:

- client error: the client's TTFT and ITL minus the same spans by the server's own write times (the load
  generator's error alone: kernel delivery plus stamping);
- server lateness: the server's writes minus their scheduled times (its own /metrics and trace);
- total: |measured - set|, the sum of both, which is what the target names.

Server and client are pinned to separate cores. The echo server runs twice: with its ``--precise`` loop
(microsecond timer waits) and with asyncio's default epoll loop, which rounds every wait up to a whole millisecond.
Prints figures, asserts nothing.
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
import urllib.request
from pathlib import Path

import numpy as np

CORES = {"server": "1", "client": "0"}


def _taskset(core: str) -> list[str]:
    return ["taskset", "-c", core] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else []


def role_client(args: argparse.Namespace) -> None:
    from hpload.loadgen import LoadSpec, Target, WorkloadSpec, run_load

    load = LoadSpec(concurrency=args.streams, num_requests=args.requests, warmup_requests=args.streams)
    workload = WorkloadSpec(input_len=8, max_tokens=args.tokens)
    req = Path(args.out).with_suffix(".jsonl")
    result = asyncio.run(run_load(Target(args.url, "echo"), workload, load, requests_path=req))
    Path(args.out).write_text(json.dumps(result.to_dict()))


def _gauges(url: str) -> dict[str, float]:
    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    return {m[1]: float(m[2]) for m in re.finditer(r"^echo:write_lateness_(p50|p99|max)_seconds (\S+)$", text, re.M)}


def _pcts(values: np.ndarray) -> tuple[float, float, float]:
    a = np.abs(values)
    return float(np.percentile(a, 50)), float(np.percentile(a, 99)), float(a.max())


def measure(mode: str, args: argparse.Namespace, tmp: Path) -> dict[str, tuple[float, float, float]]:
    log, trace = tmp / f"echo{mode}.log", tmp / f"trace{mode}.jsonl"
    cmd = [*_taskset(CORES["server"]), sys.executable, "-m", "hpload.servers.echo", "--port", "0", "--ttft-ms", str(args.ttft_ms),
           "--itl-ms", str(args.itl_ms), "--output-tokens", str(args.tokens), "--trace", str(trace)]  # fmt: skip
    cmd += [mode] if mode else []
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    out = tmp / f"result{mode}.json"
    try:
        url = ""
        for _ in range(300):
            if m := re.search(r"http://127\.0\.0\.1:(\d+)", log.read_text()):
                url = f"http://127.0.0.1:{m.group(1)}"
                break
            time.sleep(0.05)
        client = [*_taskset(CORES["client"]), sys.executable, __file__, "--role", "client", "--url", url, "--streams",
                  str(args.streams), "--tokens", str(args.tokens), "--requests", str(args.requests), "--out", str(out)]  # fmt: skip
        subprocess.run(client, check=True, timeout=600)
        gauges = _gauges(url)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server flushes its trace on the way out
        proc.wait(10)
    raw = json.loads(out.read_text())
    if raw["summary"]["failed"]:
        print(f"  {mode or 'epoll'}: failed requests {raw['errors']}")
    lines = [json.loads(x) for x in out.with_suffix(".jsonl").read_text().splitlines()]
    client = {x["request_id"]: x for x in lines if not x["warmup"] and x["ok"]}
    server = {t["id"]: t for t in map(json.loads, trace.read_text().splitlines())}
    ttft_set, itl_set = args.ttft_ms * 1e6, args.itl_ms * 1e6
    total_ttft, total_itl, err_ttft, err_itl, late, transit = [], [], [], [], [], []
    for rid, rec in client.items():
        writes = np.array(server[rid]["write_ns"], dtype=np.int64)
        itl_ns = np.array(rec["itl_ms"]) * 1e6
        total_ttft.append(rec["ttft_ms"] * 1e6 - ttft_set)
        total_itl.extend(itl_ns - itl_set)
        # The same spans by the server's clock: its first write after the client's start, and its write gaps.
        err_ttft.append(rec["ttft_ms"] * 1e6 - (writes[0] - rec["send_ns"]))
        err_itl.extend(itl_ns - np.diff(writes))
        arrival = server[rid]["arrival_ns"]
        late.extend(writes - (arrival + ttft_set + np.arange(len(writes)) * itl_set))
        transit.append(arrival - rec["send_ns"])
    ms = 1e-6
    return {
        "client ttft": _pcts(np.array(err_ttft) * ms),
        "client itl": _pcts(np.array(err_itl) * ms),
        "server lateness": _pcts(np.array(late) * ms),
        "server /metrics": (gauges.get("p50", np.nan) * 1e3, gauges.get("p99", np.nan) * 1e3, gauges.get("max", np.nan) * 1e3),
        "request transit": _pcts(np.array(transit) * ms),
        "total ttft": _pcts(np.array(total_ttft) * ms),
        "total itl": _pcts(np.array(total_itl) * ms),
        "_health": (raw["health"]["cpu_percent"], raw["health"]["loop_lag_p99_ms"], len(client)),
    }  # fmt: skip


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
    p.add_argument("--repeats", type=int, default=3, help="runs per echo loop; medians are printed")
    p.add_argument("--server-core", default=CORES["server"])
    p.add_argument("--client-core", default=CORES["client"])
    args = p.parse_args()
    CORES.update(server=args.server_core, client=args.client_core)
    if args.role == "client":
        role_client(args)
        return
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; echo on core {CORES['server']},"
          f" client on core {CORES['client']}; {args.streams} streams, {args.requests} measured requests x"
          f" {args.tokens} tokens; set ttft {args.ttft_ms} ms, itl {args.itl_ms} ms")  # fmt: skip
    print(f"|error| in ms, median of {args.repeats} runs: p50, p99, max, and the p99's range over the runs")
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("--precise", ""):
            runs = [measure(mode, args, Path(tmp)) for _ in range(args.repeats)]
            health = [r.pop("_health") for r in runs]
            print(f"echo loop {mode.strip('-') or 'epoll'}: {health[0][2]} requests joined per run; client cpu"
                  f" {np.median([h[0] for h in health]):.0f}%, loop lag p99 {np.median([h[1] for h in health]):.1f} ms")
            for name in runs[0]:
                cols = np.array([r[name] for r in runs])
                p50, p99, mx = np.median(cols, axis=0)
                print(f"  {name:<18}{p50:>9.3f}{p99:>9.3f}{mx:>9.3f}   p99 {cols[:, 1].min():.3f}..{cols[:, 1].max():.3f}")


if __name__ == "__main__":
    main()
