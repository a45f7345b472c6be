"""Which of the server's own processes is saturated, said plainly.

When the client is healthy and the server's engine-side queue stays low while TTFT is far above what the engine
spent, the time goes somewhere between the socket and the scheduler. hpload launched the server, so it can read
the CPU use of each of its processes (psutil) over the run and name the one at a full core: for vLLM the API server
(HTTP, tokenisation, detokenisation, SSE) or the engine core (scheduling and the model). No remedy is guessed: on
the H200 four API-server processes did not lift vLLM's 512-stream cliff and cost 30% at 128 streams.
"""

from __future__ import annotations

import time
from typing import Any

import psutil

SATURATED_PERCENT = 90.0  # of one core
QUEUE_LOW_MS = 5.0  # a queue mean below this (or below a tenth of the client's TTFT) is "low"
GAP_SHARE = 0.25  # TTFT outside the engine above this share of the client's TTFT is worth explaining


def role_of(proc: psutil.Process, leader_pid: int, kind: str) -> str:
    try:
        text = " ".join([proc.name(), *proc.cmdline()[:1]])
    except psutil.Error:
        text = ""
    if "EngineCore" in text:
        return "engine core"
    if "APIServer" in text or (proc.pid == leader_pid and kind == "vllm"):
        return "API server"
    if proc.pid == leader_pid:
        return f"{kind} server"
    return text.split(" ")[0] or "child"


class ServerCpu:
    """CPU use of a launched server's process tree over a block: ``with ServerCpu(pid, kind) as cpu: ...``."""

    def __init__(self, pid: int | None, kind: str = "server") -> None:
        self.pid, self.kind = pid, kind
        self._start: dict[int, tuple[psutil.Process, float]] = {}
        self._t0 = 0.0
        self.processes: list[dict[str, Any]] = []

    def _tree(self) -> list[psutil.Process]:
        if self.pid is None:
            return []
        try:
            leader = psutil.Process(self.pid)
            return [leader, *leader.children(recursive=True)]
        except psutil.Error:
            return []

    @staticmethod
    def _cpu(proc: psutil.Process) -> float | None:
        try:
            t = proc.cpu_times()
        except psutil.Error:
            return None
        return float(t.user + t.system)

    def __enter__(self) -> ServerCpu:
        self._t0 = time.monotonic()
        for proc in self._tree():
            cpu = self._cpu(proc)
            if cpu is not None:
                self._start[proc.pid] = (proc, cpu)
        return self

    def __exit__(self, *exc: object) -> None:
        wall = max(time.monotonic() - self._t0, 1e-9)
        out = []
        for proc in self._tree():
            cpu = self._cpu(proc)
            if cpu is None:
                continue
            start = self._start.get(proc.pid, (proc, 0.0))[1]
            pct = 100.0 * (cpu - start) / wall
            if pct >= 1.0:
                out.append({"pid": proc.pid, "role": role_of(proc, self.pid or -1, self.kind), "cpu_percent": pct})
        self.processes = sorted(out, key=lambda p: -p["cpu_percent"])


def verdict(
    processes: list[dict[str, Any]], client_healthy: bool, client_ttft_ms: float, queue_mean_ms: float | None,
    outside_engine_ms: float | None,
) -> str | None:
    """A line naming the saturated server process, or None when the evidence does not point at one."""
    if not processes or not client_healthy or client_ttft_ms <= 0 or queue_mean_ms is None:
        return None
    if queue_mean_ms > max(QUEUE_LOW_MS, 0.1 * client_ttft_ms):
        return None  # requests wait in the engine's queue: the engine is full, the ordinary kind of busy
    if outside_engine_ms is not None and outside_engine_ms < GAP_SHARE * client_ttft_ms:
        return None  # the engine accounts for the TTFT
    top = processes[0]
    if top["cpu_percent"] < SATURATED_PERCENT:
        return None
    others = ", ".join(f"{p['role']} {p['cpu_percent']:.0f}%" for p in processes[1:4])
    where = (f"; {outside_engine_ms:.1f} ms of it outside the engine" if outside_engine_ms is not None else "")
    return (
        f"server saturated: its {top['role']} process (pid {top['pid']}) used {top['cpu_percent']:.0f}% of a core"
        f" while the engine's queue stayed low (mean {queue_mean_ms:.1f} ms) and TTFT was {client_ttft_ms:.1f} ms"
        f"{where}; the client was healthy" + (f" (also: {others})" if others else "")
    )


def judge(result: Any, cpu: ServerCpu) -> None:
    """Record the server's processes in ``result.server_metrics`` and, when one is saturated, say so in place of
    the generic TTFT-gap warning."""
    sm = result.server_metrics if result.server_metrics is not None else {}
    sm["processes"] = cpu.processes
    result.server_metrics = sm
    s = result.summary
    queue = s.get("mean_server_queue_ms", sm.get("queue_mean_ms"))
    outside = s.get("mean_ttft_outside_engine_ms")
    line = verdict(cpu.processes, not result.health.get("warnings"), float(s.get("mean_ttft_ms") or 0.0), queue,
                   outside)  # fmt: skip
    if line:
        result.warnings = [w for w in result.warnings if not w.startswith("client-minus-server TTFT gap")]
        result.warnings.append(line)


def server_pid(server: Any) -> int | None:
    """The launched server's leader pid; None for an external server (its processes are not ours to read)."""
    child = getattr(server, "_child", None)
    return getattr(child, "pid", None)
