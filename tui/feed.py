"""The one-way channel from the engine thread to the UI: latest values only, and at most one wake-up in flight.

The engine publishes a snapshot per server every ~0.5 s, log tails about once a second, and a handful of state
events per run. Whatever the rates, the UI is woken once and then takes everything that piled up since: if the
UI falls behind (a slow terminal, a resize storm) stale snapshots are dropped, never queued. ``wake`` must be
thread-safe and must not block the engine (Textual's ``post_message`` is both; ``call_from_thread`` blocks).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hpload.loadgen.snapshot import Snapshot


@dataclass(frozen=True)
class ServerState:
    """A lifecycle step of server ``label`` (or of the whole run, label ""): starting, ready, running, done,
    stopped, failed."""

    label: str
    state: str
    detail: str = ""


@dataclass(frozen=True)
class PointDone:
    """One finished point of a scenario (``values``: the swept knobs; ``best``: the best feasible one so far)."""

    index: int
    label: str
    values: dict[str, Any]
    summary: dict[str, Any]
    feasible: bool
    best: bool = False
    note: str = ""  # why it failed or which SLO limits it broke


@dataclass
class Batch:
    snapshots: dict[str, Snapshot] = field(default_factory=dict)
    logs: dict[str, str] = field(default_factory=dict)
    events: list[ServerState | PointDone] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.snapshots or self.logs or self.events)


class Feed:
    def __init__(self, wake: Callable[[], object]) -> None:
        self._wake = wake
        self._lock = threading.Lock()
        self._batch = Batch()
        self._pending = False
        self.published = 0  # snapshots handed in; compared with what the UI drew, it shows the coalescing

    def snapshot(self, label: str, snap: Snapshot) -> None:
        with self._lock:
            self._batch.snapshots[label] = snap
            self.published += 1
        self._poke()

    def log(self, label: str, text: str) -> None:
        with self._lock:
            self._batch.logs[label] = text
        self._poke()

    def event(self, event: ServerState | PointDone) -> None:
        with self._lock:
            self._batch.events.append(event)  # events are rare and each one matters: never coalesced
        self._poke()

    def _poke(self) -> None:
        with self._lock:
            if self._pending:
                return
            self._pending = True
        self._wake()

    def drain(self) -> Batch:
        """Everything published since the last drain; the next publish wakes the UI again."""
        with self._lock:
            batch, self._batch = self._batch, Batch()
            self._pending = False
        return batch
