"""Latency recording: an HdrHistogram in microseconds with exact moments, overflow counting and a bulk path.

hdrhistogram's ``record_value`` is pure Python (a few microseconds each) and silently drops values above the
histogram's maximum. Here values are appended to a flat int64 buffer and folded into the histogram's counts array with
numpy a few times a second, so recording an inter-token gap costs one ``array.append``; values beyond the range are
counted as overflows (and still enter the exact mean and max).
"""

from __future__ import annotations

import math
import sys
from array import array
from dataclasses import dataclass

import numpy as np
from hdrh.histogram import HdrHistogram

from hpload.loadgen.snapshot import HistogramView, MetricSummary

LOWEST_US = 1
HIGHEST_US = 3_600_000_000  # one hour: longer than any request timeout
SIG_FIGS = 3  # 0.1% resolution: 20 us at 20 ms


@dataclass
class Moments:
    """Exact count/sum/sum of squares/min/max in microseconds (the histogram alone rounds to 0.1%)."""

    count: int = 0
    total: float = 0.0
    total_sq: float = 0.0
    low: int = 0
    high: int = 0

    def add(self, other: Moments) -> None:
        if other.count == 0:
            return
        if self.count == 0:
            self.low, self.high = other.low, other.high
        else:
            self.low, self.high = min(self.low, other.low), max(self.high, other.high)
        self.count += other.count
        self.total += other.total
        self.total_sq += other.total_sq

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    @property
    def std(self) -> float:
        if self.count == 0:
            return 0.0
        return math.sqrt(max(self.total_sq / self.count - self.mean**2, 0.0))

    def to_list(self) -> list[float]:
        return [self.count, self.total, self.total_sq, self.low, self.high]

    @classmethod
    def from_list(cls, raw: list[float]) -> Moments:
        return cls(int(raw[0]), float(raw[1]), float(raw[2]), int(raw[3]), int(raw[4]))


def new_hdr() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIG_FIGS)


class LatencyHistogram:
    """One metric's distribution. ``record_us`` buffers; ``flush`` folds the buffer into the histogram."""

    def __init__(self) -> None:
        self.hdr = new_hdr()
        self.moments = Moments()
        self.overflows = 0
        self._buf: array[int] = array("q")
        self._counts = np.ctypeslib.as_array(self.hdr.counts)
        self._half_mag = self.hdr.sub_bucket_half_count_magnitude
        self._mask = self.hdr.sub_bucket_mask
        self._unit_mag = self.hdr.unit_magnitude

    def record_us(self, value_us: int) -> None:
        self._buf.append(value_us)

    def record_ns(self, value_ns: int) -> None:
        self._buf.append(value_ns // 1000)

    def extend_us(self, values_us: array[int] | list[int]) -> None:
        self._buf.extend(values_us)

    @property
    def count(self) -> int:
        return self.moments.count + len(self._buf)

    def flush(self) -> None:
        if not self._buf:
            return
        values = np.frombuffer(self._buf, dtype=np.int64).copy()
        self._buf = array("q")
        np.maximum(values, 0, out=values)
        m = self.moments
        low, high = int(values.min()), int(values.max())
        m.low = low if m.count == 0 else min(m.low, low)
        m.high = high if m.count == 0 else max(m.high, high)
        m.count += len(values)
        fvalues = values.astype(np.float64)
        m.total += float(fvalues.sum())
        m.total_sq += float((fvalues * fvalues).sum())
        in_range = values[values <= HIGHEST_US]
        self.overflows += len(values) - len(in_range)
        if len(in_range) == 0:
            return
        # Vectorised HdrHistogram index: bucket = bit_length(v | mask) - unit_mag - (half_mag + 1).
        _, bit_len = np.frexp((in_range | self._mask).astype(np.float64))
        bucket = bit_len.astype(np.int64) - self._unit_mag - (self._half_mag + 1)
        sub = in_range >> (bucket + self._unit_mag)
        index = ((bucket + 1) << self._half_mag) + sub - (1 << self._half_mag)
        self._counts += np.bincount(index, minlength=len(self._counts)).astype(np.uint64)
        hdr = self.hdr
        hdr.total_count += len(in_range)
        hdr.min_value = min(hdr.min_value, int(in_range.min()))
        hdr.max_value = max(hdr.max_value, int(in_range.max()))

    def reset(self) -> None:
        # HdrHistogram.reset loops over ~23k counters in Python; zero the shared array in one call instead.
        self._buf = array("q")
        self._counts[:] = 0
        hdr = self.hdr
        hdr.total_count = 0
        hdr.min_value = sys.maxsize
        hdr.max_value = 0
        self.moments = Moments()
        self.overflows = 0

    def _lowest_values(self, index: np.ndarray) -> np.ndarray:
        """Vectorised ``HdrHistogram.get_value_from_index``."""
        half = 1 << self._half_mag
        bucket = (index >> self._half_mag) - 1
        sub = (index & (half - 1)) + half
        low = bucket < 0
        sub = np.where(low, sub - half, sub)
        bucket = np.where(low, 0, bucket)
        return sub << (bucket + self._unit_mag)

    def percentiles_us(self, pcts: tuple[float, ...]) -> list[float]:
        """Like ``get_value_at_percentile`` for each percentile (same rounding), with one numpy pass."""
        self.flush()
        total = self.hdr.total_count
        if total == 0:
            return [0.0] * len(pcts)
        cum = np.cumsum(self._counts)
        out = []
        for pct in pcts:
            target = max(int(min(pct, 100.0) * total / 100 + 0.5), 1)
            index = int(np.searchsorted(cum, target))
            value = int(self._lowest_values(np.array([index], dtype=np.int64))[0])
            out.append(float(self.hdr.get_highest_equivalent_value(value)))
        return out

    def add(self, other: LatencyHistogram) -> None:
        other.flush()
        self.flush()
        self.hdr.add(other.hdr)
        self.moments.add(other.moments)
        self.overflows += other.overflows

    def percentile_us(self, pct: float) -> float:
        return self.percentiles_us((pct,))[0]

    def summary(self) -> MetricSummary:
        self.flush()
        m = self.moments
        if m.count == 0:
            return MetricSummary(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
        p50, p90, p99 = (v / 1000 for v in self.percentiles_us((50, 90, 99)))
        return MetricSummary(m.count, m.mean / 1000, m.low / 1000, p50, p90, p99, m.high / 1000)

    def view(self, buckets: int = 40) -> HistogramView:
        """Counts on a log-spaced axis from the smallest to the largest recorded value, ready to draw."""
        self.flush()
        hdr = self.hdr
        p50, p90, p99 = (v / 1000 for v in self.percentiles_us((50, 90, 99)))
        if hdr.total_count == 0:
            return HistogramView((0.0, 1.0), (0,), 0.0, 0.0, 0.0)
        nz = np.nonzero(self._counts)[0]
        values = self._lowest_values(nz.astype(np.int64)).astype(np.float64)
        lo = max(float(values[0]), 1.0)
        hi = max(float(hdr.max_value), float(values[-1]), lo * 1.01)
        edges = np.geomspace(lo, hi * 1.0001, buckets + 1)
        counts, _ = np.histogram(values, bins=edges, weights=self._counts[nz].astype(np.float64))
        return HistogramView(tuple(float(e) / 1000 for e in edges), tuple(int(c) for c in counts), p50, p90, p99)

    def encode(self) -> str:
        self.flush()
        return self.hdr.encode().decode("ascii")

    def to_dict(self) -> dict[str, object]:
        return {"hdr": self.encode(), "moments": self.moments.to_list(), "overflows": self.overflows}

    @classmethod
    def from_dict(cls, raw: dict[str, object]) -> LatencyHistogram:
        out = cls()
        encoded = raw["hdr"]
        assert isinstance(encoded, str)
        decoded = HdrHistogram.decode(encoded.encode("ascii"))
        if decoded.get_total_count():
            out.hdr.add(decoded)
        moments = raw["moments"]
        assert isinstance(moments, list)
        out.moments = Moments.from_list(moments)
        overflows = raw.get("overflows", 0)
        out.overflows = int(overflows) if isinstance(overflows, int | float) else 0
        return out
