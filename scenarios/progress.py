"""A point's in-progress file: ``RESULTS/points/<point_id>.progress.json`` while the point is being measured.

It says what the run is doing right now, as states that really happened, in order: ``starting server``,
``server ready`` (with the start-up time), ``measuring`` (the load generator is sending), and, with every snapshot
(about twice a second), the requests started, recorded and failed so far. Another terminal, a script or a test
can follow a run through it (``watch cat results/x/points/*.progress.json``) instead of guessing from timings.

The file is replaced atomically, so a reader sees a whole one or none. It is removed once the point's record is
saved (or the run stops before the point ends); a file left behind names the pid of an ``hpload`` that died
mid-point, with the counts it had recorded by then. It never counts as a result: a point is finished only when its
``.point.json`` exists (see :mod:`hpload.scenarios.results`), and a rerun measures that point again.

``PointProgress`` sits between the runner and the caller's listener and observer, forwarding every call to them.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpload.loadgen.snapshot import Observer, Snapshot

if TYPE_CHECKING:
    from hpload.scenarios.points import Point
    from hpload.scenarios.results import PointRecord
    from hpload.servers.kinds import ServerSettings

PROGRESS_SUFFIX = ".progress.json"


def progress_path(points_dir: Path, point_id: str) -> Path:
    return points_dir / f"{point_id}{PROGRESS_SUFFIX}"


class PointProgress:
    """Writes the in-progress file of the point between ``begin`` and ``end``; a listener and observer otherwise."""

    def __init__(self, points_dir: Path, listener: Any, observer: Observer | None = None) -> None:
        self._dir = points_dir
        self._listener = listener
        self._observer = observer
        self._path: Path | None = None
        self._state: dict[str, Any] = {}

    # ---- the point's lifetime ----
    def begin(self, point_id: str, label: str) -> None:
        self._path = progress_path(self._dir, point_id)
        self._state = {"point_id": point_id, "label": label, "pid": os.getpid(), "state": "waiting for server",
                       "server_startup_s": None, "phase": None, "elapsed_s": 0.0, "requests_started": 0,
                       "requests_completed": 0, "requests_failed": 0, "in_flight": 0, "output_tokens": 0}  # fmt: skip
        self._write()

    def end(self) -> None:
        path, self._path = self._path, None
        if path is not None:
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)

    # ---- RunListener, forwarded ----
    def point_started(self, index: int, total: int, point: Point) -> None:
        self._listener.point_started(index, total, point)

    def server_starting(self, settings: ServerSettings) -> None:
        self._update(state="starting server")
        self._listener.server_starting(settings)

    def server_ready(self, settings: ServerSettings, startup_s: float) -> None:
        self._update(state="server ready", server_startup_s=round(startup_s, 3))
        self._listener.server_ready(settings, startup_s)

    def measuring(self, settings: ServerSettings) -> None:
        self._update(state="measuring")
        self._listener.measuring(settings)

    def point_finished(self, index: int, total: int, record: PointRecord, skipped: bool) -> None:
        self._listener.point_finished(index, total, record, skipped)

    def __getattr__(self, name: str) -> Any:
        # A tuning listener's extra calls (trial_finished) pass straight through.
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._listener, name)

    # ---- Observer ----
    def observe(self, snap: Snapshot) -> None:
        if self._path is not None and not snap.done:
            self._update(phase=snap.phase, elapsed_s=round(snap.elapsed_s, 3), requests_started=snap.requests_started,
                         requests_completed=snap.requests_completed, requests_failed=snap.requests_failed,
                         in_flight=snap.in_flight, output_tokens=snap.output_tokens)  # fmt: skip
        if self._observer is not None:
            self._observer(snap)

    def _update(self, **changes: Any) -> None:
        if self._path is None:
            return
        self._state.update(changes)
        self._write()

    def _write(self) -> None:
        assert self._path is not None
        self._state["updated_unix_s"] = round(time.time(), 3)  # wall clock: for people, never a latency
        tmp = self._path.with_name(f".{self._path.name}.tmp")
        try:
            # Not fsynced: it is a view of the run, not a result, and twice a second must stay cheap.
            tmp.write_text(json.dumps(self._state, sort_keys=True))
            os.replace(tmp, self._path)
        except OSError:
            # A view of the run must never end it; a full disk is reported by the result it would stop.
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
