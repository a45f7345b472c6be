"""Helpers shared by several test modules (pytest puts tests/ on sys.path, so `from helpers import ...` works)."""

from __future__ import annotations

import os
import signal
import subprocess

import psutil


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
