"""Is the client itself distorting the numbers? CPU use, event-loop lag and schedule lag, with a verdict.

Loop lag is measured by a task that sleeps a fixed period and records how late it wakes. asyncio rounds its epoll
timeout up to the next millisecond, so up to 1 ms of lag is the loop's floor, not a symptom.

A busy loop does not skew latency figures (chunks carry the kernel's arrival stamps and are read within about a
millisecond, see :mod:`hpload.loadgen.transport`); it delays sends. A closed loop then holds fewer requests in flight
than asked, and an open loop falls behind its schedule, so the load the server saw was not the load that was set.
"""

from __future__ import annotations

import asyncio
import os
from time import perf_counter_ns
from typing import Any

import psutil

from hpload.loadgen.hist import LatencyHistogram
from hpload.loadgen.snapshot import ClientHealth
from hpload.loadgen.starvation import PART_LAG_SHARE, LagAttribution, RunQueueMeter, starved, starved_message

PROBE_PERIOD_S = 0.02
CPU_BUSY_PERCENT = 90.0  # of one core: a single asyncio process cannot go beyond ~100
LOOP_LAG_LIMIT_MS = 20.0
SCHEDULE_LAG_LIMIT_MS = 20.0


class HealthMonitor:
    def __init__(self) -> None:
        self._proc = psutil.Process(os.getpid())
        self.loop_lag = LatencyHistogram()
        self._interval_lag = LatencyHistogram()
        self._cpu_start = self._cpu_s()
        self._cpu_last = self._cpu_start
        self._t_start_ns = perf_counter_ns()
        self._t_last_ns = self._t_start_ns
        self.peak_rss_mb = 0.0
        self._runq = RunQueueMeter()
        self.runq_wait_percent: float | None = None
        self._lag_cause: LagAttribution | None = None
        self.busy_intervals = 0
        self.intervals = 0
        self.warnings: list[str] = []

    def _cpu_s(self) -> float:
        t = self._proc.cpu_times()
        return float(t.user + t.system)

    async def probe(self) -> None:
        """Run until cancelled, recording how late each wake-up is."""
        period_ns = int(PROBE_PERIOD_S * 1e9)
        # Made here, on the loop's own thread: it reads that thread's run-queue wait.
        self._lag_cause = cause = LagAttribution()
        try:
            while True:
                t0 = perf_counter_ns()
                await asyncio.sleep(PROBE_PERIOD_S)
                lag_ns = max(perf_counter_ns() - t0 - period_ns, 0)
                cause.woke(lag_ns)
                lag_us = lag_ns // 1000
                self.loop_lag.record_us(lag_us)
                self._interval_lag.record_us(lag_us)
        finally:
            cause.close()

    def sample(self, schedule_lag_p99_ms: float = 0.0) -> ClientHealth:
        """Health over the interval since the previous sample."""
        now_ns = perf_counter_ns()
        cpu = self._cpu_s()
        wall_s = max((now_ns - self._t_last_ns) / 1e9, 1e-9)
        cpu_percent = 100.0 * (cpu - self._cpu_last) / wall_s
        self._cpu_last, self._t_last_ns = cpu, now_ns
        lag_ms = self._interval_lag.percentile_us(99) / 1000
        self._interval_lag.reset()
        try:
            self.peak_rss_mb = max(self.peak_rss_mb, self._proc.memory_info().rss / 2**20)
        except psutil.Error:
            pass
        self.runq_wait_percent = self._runq.sample()
        share = self._lag_cause.interval_share() if self._lag_cause is not None else None
        warning = verdict(cpu_percent, lag_ms, schedule_lag_p99_ms, share, self.runq_wait_percent)
        self.intervals += 1
        if warning:
            self.busy_intervals += 1
        return ClientHealth(cpu_percent, lag_ms, schedule_lag_p99_ms, warning is not None, warning)

    def summary(self, schedule_lag_p99_ms: float) -> dict[str, Any]:
        wall_s = max((perf_counter_ns() - self._t_start_ns) / 1e9, 1e-9)
        cpu_s = self._cpu_s() - self._cpu_start
        cpu_percent = 100.0 * cpu_s / wall_s
        lag_p99 = self.loop_lag.percentile_us(99) / 1000
        runq = self._runq.total()
        share = self._lag_cause.total_share() if self._lag_cause is not None else None
        warning = verdict(cpu_percent, lag_p99, schedule_lag_p99_ms, share, runq)
        warnings = [warning] if warning else []
        return {
            "cpu_percent": cpu_percent,
            "cpu_s": cpu_s,
            "loop_lag_p99_ms": lag_p99,
            "loop_lag_max_ms": self.loop_lag.moments.high / 1000 if self.loop_lag.count else 0.0,
            "schedule_lag_p99_ms": schedule_lag_p99_ms,
            "runq_wait_percent": runq,
            "loop_lag_waiting_share": share,
            "starved": bool(warning) and starved(cpu_percent, share) and cpu_percent < CPU_BUSY_PERCENT,
            "bottleneck": bool(warning),
            "busy_intervals": self.busy_intervals,
            "intervals": self.intervals,
            "peak_rss_mb": self.peak_rss_mb,
            "warnings": warnings,
        }


def verdict(
    cpu_percent: float, loop_lag_ms: float, schedule_lag_ms: float, lag_share_waiting: float | None = None,
    runq_wait_percent: float | None = None,
) -> str | None:
    """One warning line when the client may be the bottleneck, else None; it names a starved host (another process
    held the client's core: hpload.loadgen.starvation) apart from a busy client."""
    causes = []
    if cpu_percent >= CPU_BUSY_PERCENT:
        causes.append(f"CPU {cpu_percent:.0f}% of a core")
    if loop_lag_ms > LOOP_LAG_LIMIT_MS:
        causes.append(f"event-loop lag p99 {loop_lag_ms:.1f} ms")
    if schedule_lag_ms > SCHEDULE_LAG_LIMIT_MS:
        causes.append(f"sends {schedule_lag_ms:.1f} ms behind schedule (p99)")
    if not causes:
        return None
    if starved(cpu_percent, lag_share_waiting) and cpu_percent < CPU_BUSY_PERCENT:
        assert lag_share_waiting is not None
        return starved_message(cpu_percent, lag_share_waiting, runq_wait_percent, causes)
    part = ""
    if lag_share_waiting is not None and lag_share_waiting >= PART_LAG_SHARE:
        part = f" ({100 * lag_share_waiting:.0f}% of that lag was waiting for a CPU other processes held)"
    return "client may be the bottleneck (" + "; ".join(causes) + f"){part}: add --workers or lower the load"
