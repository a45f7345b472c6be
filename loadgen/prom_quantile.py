"""Quantiles from a Prometheus histogram without fake precision.

A cumulative bucket count says only that a quantile lies between two bucket bounds; interpolating inside a coarse
bucket (PromQL's histogram_quantile) prints a precise-looking number the data does not hold: every queue time of a
run in vLLM's first bucket (0-300 ms) read "p50 150 ms, p99 297 ms" while the mean was 0.0 ms. Here a quantile is
an interval: the bucket's bounds, tightened by the run's mean and count (every observation is >= 0, so at most a
share 1 - q of them can lie above the q-quantile x, and (1 - q) x <= mean: x <= mean / (1 - q), Markov's bound). A
point value is given only when that interval is narrow.
"""

from __future__ import annotations

import math

# A point value only when the interval is at most this share of its upper bound (then any value inside is within
# +-5% of the truth), or at most NARROW_ABS_S wide.
NARROW_FRACTION = 0.10
NARROW_ABS_S = 0.0005


def quantile_bounds(buckets: list[tuple[float, float]], q: float, mean: float | None = None) -> tuple[float, float] | None:
    """(low, high) holding the q-quantile, from sorted cumulative (upper bound, count) buckets; None when empty."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    low, high = 0.0, math.inf
    prev_bound = 0.0
    for bound, count in buckets:
        if count >= rank and count > 0:
            low, high = prev_bound, bound
            break
        prev_bound = bound
    if mean is not None and mean >= 0 and q < 1:
        high = min(high, mean / (1 - q))
        low = min(low, high)
    return low, high


def point_value(bounds: tuple[float, float]) -> float | None:
    """The quantile as one number when its interval is narrow enough to say so; None otherwise."""
    low, high = bounds
    if math.isinf(high):
        return None
    if high - low <= max(NARROW_FRACTION * high, NARROW_ABS_S):
        return (low + high) / 2
    return None


def format_bounds_ms(low_ms: float, high_ms: float) -> str:
    """'12.3 ms' when narrow, '<= 0.5 ms' when the low end is zero, else '100-300 ms'."""
    if math.isinf(high_ms):
        return f">= {low_ms:.1f} ms"
    if high_ms - low_ms <= max(NARROW_FRACTION * high_ms, NARROW_ABS_S * 1000):
        return f"{(low_ms + high_ms) / 2:.1f} ms"
    if low_ms <= 0:
        return f"<= {high_ms:.1f} ms"
    return f"{low_ms:.1f}-{high_ms:.1f} ms"
