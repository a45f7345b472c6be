"""Whose fault is a stalled client: its own work, or another process on its core?

Event-loop lag and a low request rate look the same whether the client is busy or starved. The kernel tells them
apart: ``/proc/<pid>/task/*/schedstat`` holds, per thread, the time spent running and the time spent *runnable but
waiting for a CPU* (run-queue wait). A busy client runs most of the wall time; a starved one wakes late because it
waited on the run queue while another process held its core; a loop blocked by its own code wakes late without
having waited for a CPU at all. (In the TUI screenshot of
docs/tui.png the client read event-loop lag p99 30.9 ms at 3% CPU: that is a starved client, not a busy one.)
"""

from __future__ import annotations

import glob
import os
from time import perf_counter_ns


def sched_ns(pid: int | None = None) -> tuple[int, int] | None:
    """(running, run-queue waiting) ns summed over the process's threads; None where the kernel has no schedstat."""
    run = wait = 0
    found = False
    for path in glob.glob(f"/proc/{pid or os.getpid()}/task/*/schedstat"):
        try:
            with open(path) as fh:
                fields = fh.read().split()
        except OSError:
            continue  # a thread that ended between glob and open
        if len(fields) >= 2:
            run += int(fields[0])
            wait += int(fields[1])
            found = True
    return (run, wait) if found else None


class RunQueueMeter:
    """Run-queue wait as a percent of wall time, per interval and since start."""

    def __init__(self, pid: int | None = None) -> None:
        self.pid = pid
        first = sched_ns(pid)
        self.available = first is not None
        now = perf_counter_ns()
        self._start = self._last = (now, *(first or (0, 0)))

    def _percent(self, since: tuple[int, int, int], now: tuple[int, int, int]) -> float | None:
        wall = now[0] - since[0]
        if not self.available or wall <= 0:
            return None
        return 100.0 * (now[2] - since[2]) / wall

    def _now(self) -> tuple[int, int, int]:
        stats = sched_ns(self.pid) or (0, 0)
        return (perf_counter_ns(), *stats)

    def sample(self) -> float | None:
        now = self._now()
        out = self._percent(self._last, now)
        self._last = now
        return out

    def total(self) -> float | None:
        return self._percent(self._start, self._now())


class LagAttribution:
    """How much of the event loop's lag was spent waiting for a CPU. At each probe wake-up the loop thread's own
    run-queue wait (``/proc/self/task/<tid>/schedstat``, one small read) is compared with how late it woke: a loop
    blocked by its own work (a slow callback, a sleep) wakes late without waiting on the run queue; a starved one
    was runnable all along and waited for another process to give up the core."""

    FLOOR_NS = 1_000_000  # asyncio rounds its waits up to 1 ms: lag below that is no symptom

    def __init__(self) -> None:
        import threading

        self._fh = None
        self._closed_available = False
        try:
            self._fh = open(f"/proc/self/task/{threading.get_native_id()}/schedstat", "rb")  # noqa: SIM115
        except OSError:
            pass
        self._last = self._wait()
        self.lag_ns = self.explained_ns = 0  # since the last interval() call
        self.total_lag_ns = self.total_explained_ns = 0

    def _wait(self) -> int:
        if self._fh is None:
            return 0
        try:
            self._fh.seek(0)
            return int(self._fh.read().split()[1])
        except (OSError, ValueError, IndexError):
            return 0

    def woke(self, lag_ns: int) -> None:
        wait = self._wait()
        waited, self._last = wait - self._last, wait
        if lag_ns < self.FLOOR_NS:
            return
        explained = min(max(waited, 0), lag_ns)
        self.lag_ns += lag_ns
        self.explained_ns += explained
        self.total_lag_ns += lag_ns
        self.total_explained_ns += explained

    @property
    def available(self) -> bool:
        return self._fh is not None

    def close(self) -> None:
        """The shares stay readable; only the schedstat file is let go (one per run, not one per process life)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
            self._closed_available = True

    def interval_share(self) -> float | None:
        """The share (0-1) of the loop's lag spent waiting for a CPU since the last call; None without lag."""
        out = self.explained_ns / self.lag_ns if self.lag_ns and self._readable() else None
        self.lag_ns = self.explained_ns = 0
        return out

    def total_share(self) -> float | None:
        return self.total_explained_ns / self.total_lag_ns if self.total_lag_ns and self._readable() else None

    def _readable(self) -> bool:
        return self._fh is not None or self._closed_available


# Starved: most of the loop's lag was time spent runnable, waiting for a CPU another process held. (A loop blocked by
# its own sleep on a host loaded by others measured ~0.47 here; a core taken by a busy loop, 1.0.)
STARVED_LAG_SHARE = 0.75
PART_LAG_SHARE = 0.25  # below starved, but enough to say alongside the client's own cause


def starved(cpu_percent: float, lag_share_waiting: float | None) -> bool:
    return lag_share_waiting is not None and lag_share_waiting >= STARVED_LAG_SHARE


def starved_message(cpu_percent: float, lag_share_waiting: float, runq_wait_percent: float | None,
                    symptoms: list[str]) -> str:  # fmt: skip
    waited = f", {runq_wait_percent:.0f}% of the run in all" if runq_wait_percent is not None else ""
    return (
        f"host is starving the client, which is not busy ({'; '.join(symptoms)}): {100 * lag_share_waiting:.0f}% of"
        f" its event-loop lag was spent waiting for a CPU another process held{waited}, while it ran only"
        f" {cpu_percent:.0f}% of a core; free the machine or pin the client to its own core (taskset)"
    )
