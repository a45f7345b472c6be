"""Samples the CPU use of every vLLM process (API servers, engine core, launcher) and of the load client, per
process and per thread, beside the GPU's utilisation, tagged with the run that was going on.

Issue 21 asks which of vLLM's processes is saturated at 512 streams. hpload launches nothing here (vLLM is started by
hand so that ``--api-server-count`` takes effect), so this sampler finds the processes itself:

    python3 proc_cpu.py --out cpu.jsonl --label-file label [--interval 0.5]

It writes one JSON line per tick: ``{"t", "label", "gpu_util", "procs": [{"pid", "ppid", "role", "name", "cpu",
"top_thread_cpu", "threads_busy"}]}``. ``cpu`` is percent of one core over the tick (100 = one core saturated);
``top_thread_cpu`` is the busiest thread's share, which is what a Python process with a GIL can at most use well.
The label is the first line of ``--label-file`` at the tick (the driving script writes the run's name there), so
ticks are attributed to runs without clock joins. Roles come from vLLM's process titles (``VLLM::EngineCore``,
``VLLM::APIServer_N``) and command lines; a process whose ancestor has a role inherits it (client workers).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from typing import Any

import psutil


def classify(name: str, cmdline: list[str]) -> str | None:
    cmd = " ".join(cmdline[:6])
    if name.startswith("VLLM::EngineCor") or "EngineCore" in cmd:
        return "engine_core"
    if name.startswith("VLLM::APIServer") or "APIServer" in cmd:
        return "api_server"
    if name.startswith("VLLM::DPCoordin") or "DPCoordinator" in cmd:
        return "dp_coordinator"
    if name.startswith("VLLM::Worker") or "VLLM::Worker" in cmd:
        return "worker"
    if "vllm.entrypoints" in cmd or "vllm serve" in cmd:
        return "vllm_main"  # the API server itself when api_server_count is 1, else the launcher
    if "vllm.benchmarks" in cmd or "vllm_bench" in cmd:
        return "client_vllm_bench"
    if "bench_agreement" in cmd:
        return "client_agreement"  # the agreement benchmark and the clients it runs (--role ...)
    if "minimal_client" in cmd:
        return "client_minimal"
    if "hpload serve" in cmd:
        return "server_hpload"  # the echo server of a local dry run
    if "hpload" in cmd and "proc_cpu" not in cmd:
        return "client_hpload"
    return None


def gpu_reader() -> Any:
    try:
        import pynvml
    except ImportError:
        return lambda: None
    try:
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    except pynvml.NVMLError:  # no GPU here (a local dry run): the sampler still records CPU
        return lambda: None

    def read() -> float | None:
        try:
            return float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        except pynvml.NVMLError:
            return None

    return read


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--label-file", required=True)
    ap.add_argument("--interval", type=float, default=0.5)
    args = ap.parse_args()
    stop = False

    def _stop(*_: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    gpu = gpu_reader()
    me = os.getpid()
    procs: dict[int, psutil.Process] = {}
    roles: dict[int, str | None] = {}
    last_cpu: dict[int, float] = {}
    last_threads: dict[int, dict[int, float]] = {}
    last_t = time.monotonic()
    with open(args.out, "a", buffering=1) as out:
        while not stop:
            time.sleep(args.interval)
            now = time.monotonic()
            dt = max(now - last_t, 1e-6)
            last_t = now
            try:
                with open(args.label_file) as f:
                    label = f.readline().strip()
            except OSError:
                label = ""
            alive = set()
            # Classified afresh every tick: vLLM sets its process titles only after a spawned child has imported,
            # so a first look can see a plain python3 that becomes VLLM::EngineCore seconds later.
            seen = sorted(psutil.process_iter(["pid", "ppid", "name", "cmdline"]), key=lambda q: q.info["pid"])
            new_roles: dict[int, str | None] = {}
            for p in seen:
                pid = p.info["pid"]
                if pid == me:
                    continue
                alive.add(pid)
                role = classify(p.info["name"] or "", p.info["cmdline"] or [])
                if role is None:  # children inherit a role (client workers, vLLM's helpers)
                    ppid = p.info["ppid"] or 0
                    parent = new_roles.get(ppid, roles.get(ppid))
                    if parent and parent.startswith("client"):
                        role = parent
                    elif parent in ("vllm_main", "api_server", "engine_core", "vllm_helper"):
                        role = "vllm_helper"
                new_roles[pid] = role
                if role is not None and pid not in procs:
                    procs[pid] = p
            roles = new_roles
            rows = []
            for pid in list(procs):
                if pid not in alive or roles.get(pid) is None:
                    procs.pop(pid, None)
                    last_cpu.pop(pid, None)
                    last_threads.pop(pid, None)
                    continue
                p = procs[pid]
                try:
                    with p.oneshot():
                        ct = p.cpu_times()
                        total = ct.user + ct.system
                        threads = {t.id: t.user_time + t.system_time for t in p.threads()}
                        name = p.name()
                        ppid = p.ppid()
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                prev = last_cpu.get(pid)
                prev_threads = last_threads.get(pid, {})
                last_cpu[pid] = total
                last_threads[pid] = threads
                if prev is None:
                    continue  # the first reading of a process only sets its baseline
                shares = [(v - prev_threads[k]) / dt * 100 for k, v in threads.items() if k in prev_threads]
                rows.append(
                    {
                        "pid": pid,
                        "ppid": ppid,
                        "role": roles[pid],
                        "name": name,
                        "cpu": round((total - prev) / dt * 100, 1),
                        "top_thread_cpu": round(max(shares), 1) if shares else None,
                        "threads_busy": sum(1 for s in shares if s > 20),
                    }
                )
            out.write(json.dumps({"t": round(time.time(), 3), "label": label, "gpu_util": gpu(), "procs": rows}))
            out.write("\n")


if __name__ == "__main__":
    main()
