"""The engine in a process of its own, so the UI and the load generator never share a GIL or a CPU budget.

Why a process and not a thread: Python runs one thread at a time per process. A load generator at capacity keeps
its thread busy, so a repaint in the same process would wait for the GIL and slow the load generator down, and the
client-health CPU figure would count the UI's work as the client's. In a child process the load generator gets a
core of its own, its health numbers are its own, and key presses are answered by an idle UI process.

The child (``python -m hpload.tui.child``) runs :class:`~hpload.tui.session.Session`, i.e. the scenario runner
with its servers. The parent writes the pickled plan to the child's stdin, then ``stop`` when the user stops; the
child pickles what the session publishes to its stdout, which a reader thread here hands to a coalescing
:class:`~hpload.tui.feed.Feed`. When the UI process dies, the child's stdin reaches EOF and it stops the same way,
servers included: nothing outlives hpload. A plain subprocess rather than ``multiprocessing``: Textual replaces
``sys.stderr`` with an object whose ``fileno()`` is -1, which breaks multiprocessing's resource tracker.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any

from hpload.loadgen.snapshot import Snapshot
from hpload.tui.feed import Feed, PointDone, ServerState
from hpload.tui.session import RUN, RunPlan

STOP = b"stop\n"


class _PipeSink:
    """The Feed's publishing half, on the child's side: one pickle per item."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self._lock = threading.Lock()  # the session's loop and its log-reading threads both publish

    def _send(self, item: tuple[Any, ...]) -> None:
        data = pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
        with self._lock, contextlib.suppress(BrokenPipeError, OSError):
            self._out.write(data)
            self._out.flush()

    def snapshot(self, label: str, snap: Snapshot) -> None:
        self._send(("snapshot", label, snap))

    def log(self, label: str, text: str) -> None:
        self._send(("log", label, text))

    def event(self, event: ServerState | PointDone) -> None:
        self._send(("event", event))


def _read_exactly(fd: int, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            raise EOFError("the UI closed the engine's stdin before sending the plan")
        data += chunk
    return data


def child_main() -> int:
    """Entry point of the engine process."""
    # fd 1 becomes the private channel; stdout and stderr go to the log file the parent names, because the
    # child shares the terminal the UI draws on and anything printed there would tear the screen.
    channel = os.fdopen(os.dup(1), "wb")
    plan, results_root, log_path = pickle.loads(_read_exactly(0, int.from_bytes(_read_exactly(0, 8), "big")))
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)

    from hpload.tui.session import Session

    session = Session(plan, _PipeSink(channel), results_root=results_root)  # type: ignore[arg-type]

    def watch_stdin() -> None:
        # "stop" from the UI, or EOF because the UI is gone: either way, wind down and stop the servers. A raw
        # read: a buffered one would hold sys.stdin's lock and abort the interpreter's shutdown.
        with contextlib.suppress(OSError):
            os.read(0, 64)
        session.stop()

    threading.Thread(target=watch_stdin, name="stop-watch", daemon=True).start()
    try:
        session.run()
    finally:
        with contextlib.suppress(OSError):
            channel.close()
    return 0


class ChildRun:
    """Parent-side handle. ``run()`` blocks (call it from a thread worker) until the child has exited."""

    def __init__(self, plan: RunPlan, feed: Feed, *, results_root: Path | None = None) -> None:
        self.plan = plan
        self.feed = feed
        self.results_root = results_root
        self._stop_requested = threading.Event()
        self._lock = threading.Lock()
        self.process: subprocess.Popen[bytes] | None = None
        self.exitcode: int | None = None

    @property
    def stop_requested(self) -> bool:
        return self._stop_requested.is_set()

    def stop(self) -> None:
        self._stop_requested.set()
        with self._lock:
            process = self.process
            if process is not None and process.stdin is not None and not process.stdin.closed:
                with contextlib.suppress(BrokenPipeError, OSError):
                    process.stdin.write(STOP)
                    process.stdin.flush()

    def log_path(self) -> Path:
        root = self.results_root if self.results_root is not None else Path("results")
        path = root / self.plan.scenario.name
        path.mkdir(parents=True, exist_ok=True)
        return path / "tui-engine.log"

    def run(self) -> None:
        log_path = self.log_path()
        with self._lock:
            process = subprocess.Popen(  # noqa: S603 - this interpreter, a fixed module, no shell
                [sys.executable, "-m", "hpload.tui.child"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                # Its own session: a terminal's signals reach hpload, which then stops the child in order.
                start_new_session=True,
            )
            self.process = process
            assert process.stdin is not None and process.stdout is not None
            plan = pickle.dumps((self.plan, self.results_root, str(log_path)))
            process.stdin.write(len(plan).to_bytes(8, "big") + plan)
            process.stdin.flush()
        if self.stop_requested:
            self.stop()
        try:
            while True:
                try:
                    item = pickle.load(process.stdout)
                except (EOFError, pickle.UnpicklingError, OSError):
                    break
                self._dispatch(item)
        finally:
            with self._lock:
                if process.stdin is not None:
                    with contextlib.suppress(OSError):
                        process.stdin.close()
            self.exitcode = process.wait()
            process.stdout.close()
        if self.exitcode != 0 and not self.stop_requested:
            detail = f"engine process exited with code {self.exitcode}; its output is in {log_path}"
            self.feed.event(ServerState(RUN, "failed", detail))

    def _dispatch(self, item: tuple[Any, ...]) -> None:
        kind = item[0]
        if kind == "snapshot":
            self.feed.snapshot(item[1], item[2])
        elif kind == "log":
            self.feed.log(item[1], item[2])
        elif kind == "event":
            self.feed.event(item[1])


if __name__ == "__main__":
    raise SystemExit(child_main())
