"""A log-scaled latency axis and the arithmetic to draw a ``HistogramView`` on it, with no Textual in sight.

Latency spans decades (a 2 ms ITL beside a 3 s E2EL), so the axis is logarithmic. Its ends snap to 1-2-5 steps:
an axis that moved with every new maximum would make the bars crawl sideways while the eye tries to read them,
and two servers drawn on one shared, snapped axis can be compared column by column.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from hpload.loadgen.snapshot import HistogramView

# Below a microsecond the clock, not the server, is being measured; it also keeps log() away from zero.
MIN_MS = 0.001
_STEPS = (1.0, 2.0, 5.0)
BLOCKS = " ▁▂▃▄▅▆▇█"  # eighths of a cell, bottom-up


def format_ms(value_ms: float) -> str:
    """A latency in the fewest characters that still read unambiguously (``850µs``, ``12.3ms``, ``1.25s``)."""
    if value_ms < 1.0:
        return f"{value_ms * 1000:.0f}µs"
    if value_ms < 10.0:
        return f"{value_ms:.2f}ms"
    if value_ms < 100.0:
        return f"{value_ms:.1f}ms"
    if value_ms < 1000.0:
        return f"{value_ms:.0f}ms"
    return f"{value_ms / 1000:.2f}s"


def _tick_label(value_ms: float) -> str:
    # Tick values are 1-2-5 steps, so they print without decimals.
    if value_ms < 1.0:
        return f"{value_ms * 1000:.0f}µs"
    if value_ms < 1000.0:
        return f"{value_ms:.0f}ms"
    seconds = value_ms / 1000
    return f"{seconds:.0f}s" if seconds >= 1 and seconds == int(seconds) else f"{seconds:g}s"


def snap_down(value_ms: float) -> float:
    value_ms = max(value_ms, MIN_MS)
    decade = 10.0 ** math.floor(math.log10(value_ms))
    for step in reversed(_STEPS):
        if step * decade <= value_ms * (1 + 1e-9):
            return step * decade
    return decade


def snap_up(value_ms: float) -> float:
    value_ms = max(value_ms, MIN_MS)
    decade = 10.0 ** math.floor(math.log10(value_ms))
    for step in (*_STEPS, 10.0):
        if step * decade >= value_ms * (1 - 1e-9):
            return step * decade
    return 10 * decade


def occupied_range(view: HistogramView) -> tuple[float, float] | None:
    """The latency span of the buckets that hold samples, or None for an empty histogram."""
    filled = [i for i, count in enumerate(view.counts) if count > 0]
    if not filled:
        return None
    return max(view.edges_ms[filled[0]], MIN_MS), max(view.edges_ms[filled[-1] + 1], MIN_MS)


@dataclass(frozen=True)
class LogAxis:
    lo_ms: float
    hi_ms: float

    @classmethod
    def covering(cls, views: Iterable[HistogramView | None]) -> LogAxis | None:
        """The snapped axis that holds every sample of every view: one per metric shared by all servers."""
        spans = [span for view in views if view is not None and (span := occupied_range(view)) is not None]
        if not spans:
            return None
        lo = snap_down(min(lo for lo, _ in spans))
        hi = snap_up(max(hi for _, hi in spans))
        if hi <= lo:
            hi = snap_up(lo * 1.01)
        return cls(lo, hi)

    def fraction(self, value_ms: float) -> float:
        """Where ``value_ms`` falls between the ends, 0..1 (clamped)."""
        span = math.log(self.hi_ms) - math.log(self.lo_ms)
        frac = (math.log(max(value_ms, MIN_MS)) - math.log(self.lo_ms)) / span
        return min(max(frac, 0.0), 1.0)

    def column(self, value_ms: float, width: int) -> int:
        return min(int(self.fraction(value_ms) * width), width - 1)

    def rebin(self, view: HistogramView, width: int) -> list[float]:
        """Sample counts per screen column; each source bucket is spread over the columns it overlaps."""
        columns = [0.0] * width
        if width <= 0:
            return columns
        for i, count in enumerate(view.counts):
            if count <= 0:
                continue
            left = self.fraction(view.edges_ms[i]) * width
            right = self.fraction(view.edges_ms[i + 1]) * width
            first, last = int(left), min(int(math.ceil(right)) - 1, width - 1)
            first = min(first, width - 1)
            if last <= first or right - left <= 1e-9:
                columns[first] += count
                continue
            for col in range(first, last + 1):
                overlap = min(right, col + 1) - max(left, col)
                columns[col] += count * overlap / (right - left)
        return columns

    def ticks(self, width: int) -> list[tuple[int, str]]:
        """Labelled tick columns that do not overlap: decades first, then 2s and 5s where there is room."""
        candidates: list[tuple[int, float]] = []  # (priority, value)
        decade = 10.0 ** math.floor(math.log10(self.lo_ms))
        while decade <= self.hi_ms * 1.0001:
            for priority, step in enumerate(_STEPS):
                value = step * decade
                if self.lo_ms * 0.9999 <= value <= self.hi_ms * 1.0001:
                    candidates.append((priority, value))
            decade *= 10
        taken: list[tuple[int, int]] = []  # occupied [start, end) spans, one blank cell between labels
        placed: list[tuple[int, str]] = []
        for _, value in sorted(candidates):
            label = _tick_label(value)
            col = self.column(value, width)
            start = min(col, width - len(label))
            end = start + len(label)
            if start < 0 or any(start < e + 1 and s < end + 1 for s, e in taken):
                continue
            taken.append((start, end))
            placed.append((start, label))
        return sorted(placed)


def bar_rows(columns: list[float], height: int, scale_max: float) -> list[str]:
    """Rows of block characters, top row first, for column values scaled so ``scale_max`` fills ``height``."""
    if height <= 0:
        return []
    eighths_total = height * 8
    levels = []
    for value in columns:
        if value <= 0 or scale_max <= 0:
            levels.append(0)
            continue
        # A bucket with any sample shows at least a sliver: the tail is what people look for.
        levels.append(max(1, min(eighths_total, round(value / scale_max * eighths_total))))
    rows = []
    for row in range(height - 1, -1, -1):
        floor = row * 8
        rows.append("".join(BLOCKS[min(max(level - floor, 0), 8)] for level in levels))
    return rows
