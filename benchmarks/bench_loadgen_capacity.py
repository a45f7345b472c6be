"""Load-generator capacity: streamed requests/s and SSE chunks per client CPU-second, hpload (1 process and
--workers 2) beside vLLM's own `bench serve` client, all against the same echo server.

    python benchmarks/bench_loadgen_capacity.py [--concurrency 64 256] [--requests 3000] [--tokens 32]

The echo server runs pinned to one core and every client to the other (taskset), so a client's CPU use is its own.
The echo server sends tokens ``--itl-ms`` apart after a 1 ms TTFT: fast enough that the client, not the server,
limits throughput. CPU-seconds are counted over the sending phase only (hpload: its health monitor; vLLM: around its
``benchmark()`` coroutine), so imports and prompt sampling are excluded for both. Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Overridden by --server-cores / --client-cores (a bigger machine gives --workers cores of their own).
SERVER_CORE, CLIENT_CORE = "1", "0"
# (row name, role, worker processes). "httpx pool" is hpload with httpx's own httpcore pool instead of LeanTransport,
# the measurement behind the transport choice.
CLIENTS = (
    ("vllm bench", "vllm", 1),
    ("hpload", "hpload", 1),
    ("hpload workers=2", "hpload", 2),
    ("hpload httpx pool", "hpload-httpcore", 1),
)


def _set_cores(server: str, client: str) -> None:
    global SERVER_CORE, CLIENT_CORE
    SERVER_CORE, CLIENT_CORE = server, client


def _taskset(core: str) -> list[str]:
    return ["taskset", "-c", core] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else []


def start_echo(tokens: int, itl_ms: float, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    cmd = [*_taskset(SERVER_CORE), sys.executable, "-m", "hpload.servers.echo", "--port", "0", "--ttft-ms", "1",
           "--itl-ms", str(itl_ms), "--output-tokens", str(tokens)]  # fmt: skip
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    for _ in range(300):
        m = re.search(r"http://127\.0\.0\.1:(\d+)", log.read_text())
        if m:
            return proc, f"http://127.0.0.1:{m.group(1)}"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(5)
    raise RuntimeError(log.read_text())


def _cpu_s(pid: int) -> float:
    """CPU seconds of the echo server (measured from outside: it is a separate process)."""
    import psutil

    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)


def run_client(role: str, url: str, conc: int, n: int, tokens: int, workers: int = 1) -> dict[str, Any]:
    transport = "lean"
    if role == "hpload-httpcore":
        role, transport = "hpload", "httpcore"
    cmd = [*_taskset(CLIENT_CORE), sys.executable, __file__, "--role", role, "--url", url, "--concurrency", str(conc),
           "--requests", str(n), "--tokens", str(tokens), "--workers", str(workers)]  # fmt: skip
    env = {**os.environ, "HPLOAD_LOADGEN_TRANSPORT": transport}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False, env=env)
    line = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    if not line:
        raise RuntimeError(f"{role} client failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return json.loads(line[-1][7:])


# ---------------------------------------------------------------- client roles (run under taskset)


def role_hpload(args: argparse.Namespace) -> dict[str, Any]:
    from hpload.loadgen import LoadSpec, Target, WorkloadSpec, run_load

    target = Target(args.url, "echo")
    workload = WorkloadSpec(input_len=16, max_tokens=args.tokens)
    load = LoadSpec(concurrency=args.concurrency, num_requests=args.requests, workers=args.workers)
    parent_cpu0 = time.process_time()
    result = asyncio.run(run_load(target, workload, load))
    s = result.summary
    cpu_s = float(result.health["cpu_s"])
    if args.workers > 1:
        cpu_s += time.process_time() - parent_cpu0  # the parent folds worker deltas in
    return {
        "completed": s["completed"],
        "failed": s["failed"],
        "duration_s": s["duration"],
        "chunks": result.token_check["output_chunk_tokens"],
        "cpu_s": cpu_s,
        "ttft_p50_ms": s["median_ttft_ms"],
        "itl_p50_ms": s["median_itl_ms"],
    }


def role_vllm(args: argparse.Namespace) -> dict[str, Any]:
    from vllm.benchmarks import serve

    from hpload.model import ensure_tiny_model

    cpu: dict[str, float] = {}
    inner = serve.benchmark

    async def timed(*a: Any, **kw: Any) -> Any:
        cpu["start"] = time.process_time()
        try:
            return await inner(*a, **kw)
        finally:
            cpu["end"] = time.process_time()

    serve.benchmark = timed  # count CPU over the sending phase only, as for hpload
    parser = argparse.ArgumentParser()
    serve.add_cli_args(parser)
    ns = parser.parse_args(
        ["--base-url", args.url, "--model", "echo", "--tokenizer", str(ensure_tiny_model()),
         "--dataset-name", "random", "--random-input-len", "16", "--random-output-len", str(args.tokens),
         "--num-prompts", str(args.requests), "--max-concurrency", str(args.concurrency), "--ignore-eos",
         "--disable-tqdm", "--percentile-metrics", "ttft,tpot,itl,e2el"]
    )  # fmt: skip
    out = serve.main(ns)
    return {
        "completed": out["completed"],
        "failed": out.get("failed", 0),
        "duration_s": out["duration"],
        "chunks": out["total_output_tokens"],  # the echo server sends one token per chunk
        "cpu_s": cpu["end"] - cpu["start"],
        "ttft_p50_ms": out["median_ttft_ms"],
        "itl_p50_ms": out["median_itl_ms"],
    }


# ---------------------------------------------------------------- orchestration


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--role", choices=["hpload", "vllm"])
    p.add_argument("--url")
    p.add_argument("--concurrency", type=int, nargs="+", default=[64, 256])
    p.add_argument("--requests", type=int, default=3000)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--itl-ms", type=float, default=2.0, help="echo inter-token delay")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--server-cores", default=SERVER_CORE, help="taskset list for the echo server (default 1)")
    p.add_argument("--client-cores", default=CLIENT_CORE, help="taskset list for every client (default 0)")
    args = p.parse_args()
    _set_cores(args.server_cores, args.client_cores)
    if args.role:
        args.concurrency = args.concurrency[0]
        fn = role_hpload if args.role == "hpload" else role_vllm
        print("RESULT " + json.dumps(fn(args)), flush=True)
        return

    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} (shared: tails follow it); server on core(s) {SERVER_CORE}, clients on core(s) {CLIENT_CORE}")
    print(f"{args.requests} streamed requests x {args.tokens} tokens, echo ttft 1 ms, itl {args.itl_ms} ms\n")
    header = f"{'client':<20}{'conc':>6}{'req/s':>9}{'chunks/s':>10}{'cpu s':>8}{'chunks/cpu-s':>14}{'ttft p50':>10}{'echo chunks/cpu-s':>18}"
    print(header)
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_echo(args.tokens, args.itl_ms, Path(tmp) / "echo.log")
        try:
            for conc in args.concurrency:
                rows: dict[str, list[dict[str, Any]]] = {}
                for _ in range(args.repeats):
                    for name, role, workers in CLIENTS:
                        server_cpu0 = _cpu_s(proc.pid)
                        try:
                            r = run_client(role, url, conc, args.requests, args.tokens, workers)
                        except (RuntimeError, subprocess.TimeoutExpired) as err:
                            # One client that cannot run here (say, another vLLM version) must not hide the others.
                            print(f"{name:<20}{conc:>6}  did not run: {str(err).strip().splitlines()[-1][:200]}")
                            continue
                        r["server_cpu_s"] = _cpu_s(proc.pid) - server_cpu0
                        rows.setdefault(name, []).append(r)
                med: dict[str, dict[str, float]] = {}
                for name, runs in rows.items():
                    m = {
                        "rps": statistics.median(r["completed"] / r["duration_s"] for r in runs),
                        "cps": statistics.median(r["chunks"] / r["duration_s"] for r in runs),
                        "cpu": statistics.median(r["cpu_s"] for r in runs),
                        "per_cpu": statistics.median(r["chunks"] / r["cpu_s"] for r in runs),
                        "server_per_cpu": statistics.median(r["chunks"] / max(r["server_cpu_s"], 1e-9) for r in runs),
                        "ttft": statistics.median(r["ttft_p50_ms"] for r in runs),
                        "failed": sum(r["failed"] for r in runs),
                    }
                    med[name] = m
                    print(f"{name:<20}{conc:>6}{m['rps']:>9.0f}{m['cps']:>10.0f}{m['cpu']:>8.2f}"
                          f"{m['per_cpu']:>14.0f}{m['ttft']:>10.2f}{m['server_per_cpu']:>16.0f}" + (f"  failed {m['failed']}" if m["failed"] else ""))  # fmt: skip
                base = med.get("vllm bench") or med.get("hpload")
                if base is None:
                    continue
                for name in [n for n in ("hpload", "hpload workers=2", "hpload httpx pool") if n in med]:
                    print(f"  ratio {name} / {'vllm bench' if 'vllm bench' in med else 'hpload'} at {conc}: chunks per CPU-s {med[name]['per_cpu'] / base['per_cpu']:.2f},"
                          f" req/s {med[name]['rps'] / base['rps']:.2f}")  # fmt: skip
        finally:
            stop(proc)


if __name__ == "__main__":
    main()
