"""Child processes that never outlive hpload.

Every server hpload starts runs in its own process group (vLLM forks an engine core and workers, so signalling only
the parent would orphan them), writes to a log file (an undrained pipe would stall it once the buffer fills), and is
kept in a registry so that SIGTERM, Ctrl-C or a normal exit of hpload stops every group: SIGTERM to the group, a
bounded wait, then SIGKILL. A SIGKILLed hpload runs none of that, so each child also asks the kernel for SIGTERM
when hpload dies (``PR_SET_PDEATHSIG``, see :mod:`hpload.pdeath`); the server's own SIGTERM handling then stops
what it started.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType

import psutil

DEFAULT_GRACE_S = 10.0

_registry: dict[int, Child] = {}
_registry_lock = threading.Lock()
_hooks_installed = False


class Child:
    """One spawned process group. The leader's pid is also the group id."""

    def __init__(self, popen: subprocess.Popen[bytes], argv: Sequence[str], log_path: Path) -> None:
        self.popen = popen
        self.argv = list(argv)
        self.log_path = log_path
        self.pid = popen.pid
        self.pgid = popen.pid  # start_new_session makes the leader the group (and session) leader

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def pids(self) -> list[int]:
        """The leader (while it runs) and every live process still in its group, leader first."""
        found: list[int] = [self.pid] if self.alive() else []
        try:
            descendants = psutil.Process(self.pid).children(recursive=True) if self.alive() else []
        except psutil.Error:
            descendants = []
        found += [p.pid for p in descendants if p.pid not in found]
        # Children re-parented to init after the leader died still carry the group id.
        for proc in psutil.process_iter(["pid"]):
            pid = proc.info["pid"]
            if pid in found:
                continue
            with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
                if os.getpgid(pid) == self.pgid and _is_running(pid):
                    found.append(pid)
        return found

    def log_tail(self, n: int = 40) -> str:
        return tail_file(self.log_path, n)

    def signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, signum)

    def terminate(self, grace_s: float = DEFAULT_GRACE_S) -> int | None:
        """SIGTERM to the group, wait up to ``grace_s`` for every member, then SIGKILL. Blocking."""
        self.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and self._group_has_members():
            self.popen.poll()  # reap the leader, or it lingers as a zombie that still counts as a member
            time.sleep(0.05)
        if self._group_has_members():
            self.signal_group(signal.SIGKILL)
            # SIGKILL is delivered asynchronously: wait until the members are really gone, not just signalled.
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and self._group_has_members():
                time.sleep(0.02)
        _unregister(self)
        return self.popen.poll()

    async def aterminate(self, grace_s: float = DEFAULT_GRACE_S) -> int | None:
        """:meth:`terminate` without blocking the event loop."""
        return await asyncio.to_thread(self.terminate, grace_s)

    def _group_has_members(self) -> bool:
        self.popen.poll()
        try:
            os.killpg(self.pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        # killpg(0) also succeeds while only zombies remain; those are gone for every practical purpose.
        return bool(self.pids())


def spawn(
    argv: Sequence[str],
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Child:
    """Start ``argv`` (never through a shell) in a new process group, stdout and stderr appended to ``log_path``."""
    if not argv:
        raise ValueError("argv is empty")
    _install_hooks()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    full_env = dict(os.environ if env is None else env)
    full_env.setdefault("PYTHONUNBUFFERED", "1")  # log lines reach the file while the child runs, not at exit
    from hpload.pdeath import die_with_parent

    with open(log_path, "ab") as log:
        popen = subprocess.Popen(  # noqa: S603 - an argument list, never a shell
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=str(cwd) if cwd else None,
            start_new_session=True,
            preexec_fn=die_with_parent(),
        )
    child = Child(popen, argv, log_path)
    with _registry_lock:
        _registry[child.pid] = child
    return child


def live_children() -> list[Child]:
    with _registry_lock:
        return list(_registry.values())


def kill_all(grace_s: float = DEFAULT_GRACE_S) -> None:
    """Stop every registered group, in parallel so that the bounded waits do not add up."""
    children = live_children()
    threads = [threading.Thread(target=c.terminate, args=(grace_s,), daemon=True) for c in children]
    for t in threads:
        t.start()
    for t in threads:
        t.join(grace_s + 6)


def tail_file(path: Path | None, n: int = 40) -> str:
    if path is None or not path.is_file():
        return ""
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - 64 * 1024))
        data = fh.read()
    lines = data.decode("utf-8", errors="replace").splitlines()
    return "\n".join(lines[-n:])


def _is_running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _unregister(child: Child) -> None:
    with _registry_lock:
        _registry.pop(child.pid, None)


def _install_hooks() -> None:
    """atexit always; SIGTERM only where nobody else handles it (``hpload.cli`` turns it into Ctrl-C, whose
    unwinding stops servers through their context managers and then reaches atexit)."""
    global _hooks_installed
    if _hooks_installed:
        return
    _hooks_installed = True
    atexit.register(kill_all)
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    kill_all()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
