"""Headless progress: one status line per point that redraws in place on a terminal, and sparse plain lines
(every few seconds) when output goes to a file or a pipe, so CI logs stay readable."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from hpload.loadgen import server_timing
from hpload.loadgen.snapshot import Snapshot
from hpload.scenarios.points import Point
from hpload.scenarios.results import PointRecord
from hpload.servers.kinds import KINDS, ServerSettings

_BAR = 24


def _bar(fraction: float) -> str:
    filled = int(round(max(0.0, min(1.0, fraction)) * _BAR))
    return "[" + "#" * filled + "." * (_BAR - filled) + "]"


def describe(point: Point) -> str:
    settings = " ".join(f"{k.split('.', 1)[-1]}={v}" for k, v in point.settings.items())
    repeat = f" repeat {point.repeat + 1}" if point.repeat else ""
    return f"{point.label}{' ' + settings if settings else ''}{repeat}"


class ConsoleProgress:
    """Both a ``RunListener`` and a load-generator ``Observer``."""

    def __init__(self, stream: TextIO | None = None, *, plain_interval_s: float = 5.0, quiet: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.quiet = quiet
        self._plain_interval_s = plain_interval_s
        self._last_plain = 0.0
        self._total_requests: int | None = None
        self._total_s: float | None = None
        self._prefix = ""
        self._dirty = False

    def _write_line(self, text: str, always: bool = False) -> None:
        if self.quiet and not always:
            return
        if self._dirty:
            self.stream.write("\r\x1b[2K")
            self._dirty = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def point_started(self, index: int, total: int, point: Point) -> None:
        # Nothing printed yet: the lines that follow say what happens (a server starts, then load runs).
        self._prefix = f"[{index}/{total}] {describe(point)}"
        self._total_requests = point.load.num_requests
        self._total_s = point.load.measure_s
        self._last_plain = 0.0

    def server_starting(self, settings: ServerSettings) -> None:
        note = KINDS[settings.kind].start_note
        extra = f" ({note})" if note else ""
        self._write_line(f"starting server {settings.label} ({settings.kind}){extra} ...")

    def server_ready(self, settings: ServerSettings, startup_s: float) -> None:
        self._write_line(f"{settings.label} ready in {startup_s:.1f} s")

    def measuring(self, settings: ServerSettings) -> None:
        self._write_line(f"{self._prefix or settings.label}: measuring")

    def point_finished(self, index: int, total: int, record: PointRecord, skipped: bool) -> None:
        if skipped:
            self._write_line(f"[{index}/{total}] {record.point_id}: already finished, skipped")
            return
        if not record.ok:
            self._write_line(f"[{index}/{total}] {record.label}: FAILED: {record.error}")
            return
        s = record.summary
        self._write_line(
            f"[{index}/{total}] {record.label}: done  {s.get('completed', 0)} req  "
            f"{float(s.get('output_throughput') or 0):.1f} out tok/s  "
            f"p99 ttft {float(s.get('p99_ttft_ms') or 0):.1f} ms  p99 tpot {float(s.get('p99_tpot_ms') or 0):.2f} ms"
            + (f"  failed {s.get('failed')}" if s.get("failed") else "")
        )
        for line in server_timing.summary_lines(s):
            self._write_line(f"[{index}/{total}] {record.label}: {line}")
        for warning in record.warnings:
            # Even with --quiet: a point's figures are read with its warnings, and progress lines scroll away.
            self._write_line(f"[{index}/{total}] {record.label}: warning: {warning}", always=True)

    def __call__(self, snap: Snapshot) -> None:
        if self.quiet or snap.done:
            return
        if self._total_requests:
            fraction = snap.requests_completed / self._total_requests
        elif self._total_s:
            fraction = snap.elapsed_s / self._total_s
        else:
            fraction = 0.0
        ttft = snap.metrics.get("ttft")
        health = snap.health
        text = (
            f"{self._prefix} {_bar(fraction)} {snap.phase} {snap.requests_completed} done "
            f"{snap.in_flight} in flight  {snap.output_token_rate:.0f} tok/s"
            + (f"  p99 ttft {ttft.p99_ms:.0f} ms" if ttft and ttft.count else "")
            + (f"  errors {snap.requests_failed}" if snap.requests_failed else "")
            + (f"  CLIENT: {health.warning}" if health and health.bottleneck and health.warning else "")
        )
        if self.tty:
            self.stream.write("\r\x1b[2K" + text[:200])
            self.stream.flush()
            self._dirty = True
            return
        now = time.monotonic()
        if now - self._last_plain >= self._plain_interval_s:
            self._last_plain = now
            self.stream.write(text + "\n")
            self.stream.flush()
