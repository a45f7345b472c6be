"""Whose fault is a stalled client: its own work, or another process on its core?

Event-loop lag and a low request rate look the same whether the client is busy or starved. The kernel tells them
apart: ``/proc/<pid>/task/*/schedstat`` holds, per thread, the time spent running and the time spent *runnable but
waiting for a CPU* (run-queue wait). A busy client runs most of the wall time; a starved one waits on the run queue
about as long as, or longer than, it runs, because another process holds its core. (In the TUI screenshot of
docs/tui.png the client read event-loop lag p99 30.9 ms at 3% CPU: that is a starved client, not a busy one.)
"""

from __future__ import annotations

import glob
import os
from time import perf_counter_ns

# Starved: waited on the run queue for at least this share of the wall time, and at least as long as it ran.
STARVED_WAIT_PERCENT = 25.0


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


def starved(cpu_percent: float, runq_wait_percent: float | None) -> bool:
    return (
        runq_wait_percent is not None
        and runq_wait_percent >= STARVED_WAIT_PERCENT
        and runq_wait_percent >= cpu_percent
    )


def starved_message(cpu_percent: float, runq_wait_percent: float, symptoms: list[str]) -> str:
    return (
        f"host is starving the client, which is not busy ({'; '.join(symptoms)}): it waited for a CPU"
        f" {runq_wait_percent:.0f}% of the time while another process held its core, and ran only"
        f" {cpu_percent:.0f}%; free the machine or pin the client to its own core (taskset)"
    )
