"""Helpers shared by several test modules (pytest puts tests/ on sys.path, so `from helpers import ...` works)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from hpload.servers import Server

# The one place that sets how patient the tests are while they wait for a state (a server ready, a point written,
# a request recorded, a process gone). A cold first start (empty page cache, first imports) or a busy core makes
# every step slower; only these limits grow with it, never an assertion's bound. HPLOAD_TEST_WAIT_FACTOR overrides.
WAIT_FACTOR = float(os.environ.get("HPLOAD_TEST_WAIT_FACTOR") or (2.0 if (os.cpu_count() or 1) <= 2 else 1.0))


def wait_s(seconds: float) -> float:
    """A limit on a wait for a state, in seconds, scaled for this machine."""
    return seconds * WAIT_FACTOR


def wait_until(predicate: Callable[[], object], timeout_s: float, what: str, poll_s: float = 0.05) -> None:
    """Poll ``predicate`` until it holds; ``timeout_s`` is scaled by :data:`WAIT_FACTOR`."""
    deadline = time.monotonic() + wait_s(timeout_s)
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {wait_s(timeout_s):.0f} s waiting for {what}")
        time.sleep(poll_s)


def kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL hpload alone (a crash), then clean up the servers it started, each in its own process group."""
    children = psutil.Process(proc.pid).children(recursive=True)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    for child in children:
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def engine_pids(pids: list[int]) -> list[int]:
    """The vLLM engine-core processes among ``pids`` (the server's process group)."""
    found = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            if "EngineCore" in proc.name() or any("EngineCore" in part for part in proc.cmdline()):
                found.append(pid)
        except psutil.Error:
            continue
    return found


def point_in_progress(results: Path, *, measured: int = 1) -> dict[str, object] | None:
    """The in-progress file of the point being measured in ``results`` (``hpload run``/``tune --results``) once the
    load generator has recorded at least ``measured`` measured requests of it, else None."""
    for path in sorted((results / "points").glob("*.progress.json")):
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # replaced or removed under us: look again next time
        if state.get("state") == "measuring" and int(state.get("requests_completed") or 0) >= measured:
            return dict(state)
    return None


class EchoProc:
    """``python -m hpload.servers.echo`` on a free port, its output in a log file, its process group killed after."""

    def __init__(self, log: Path, *args: str, trace: Path | None = None) -> None:
        self.log = log
        self.trace = trace
        if trace is not None:
            args = (*args, "--trace", str(trace))
        with log.open("w") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hpload.servers.echo", "--port", "0", *args],
                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + wait_s(30)
        while time.monotonic() < deadline:
            m = re.search(r"http://127\.0\.0\.1:(\d+)", log.read_text())
            if m:
                self.url = f"http://127.0.0.1:{m.group(1)}"
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"echo server did not start: {log.read_text()[-500:]}")

    def stop(self) -> None:
        """SIGTERM: the server flushes its trace on the way out."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def start_server(server: Server) -> Server:
    """Start and wait for readiness synchronously: the server's own ``async with`` entry, which stops it again if
    readiness fails."""
    asyncio.run(server.__aenter__())
    return server


def stop_server(server: Server) -> None:
    asyncio.run(server.stop())
