"""The stats snapshot contract between the load generator and its consumers (console, TUI, none).

The engine publishes one ``Snapshot`` every ``snapshot_interval_s`` (a few per second at most), never one message
per request. Consumers only read these frozen values; they never reach into the engine. Times are milliseconds
here because that is what people read; the engine records nanoseconds from ``time.perf_counter_ns``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

# Metric names follow vLLM's `bench serve`: ttft, itl (gaps between token chunks), tpot, e2el.
METRICS = ("ttft", "itl", "tpot", "e2el")


@dataclass(frozen=True)
class MetricSummary:
    count: int
    mean_ms: float
    min_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float


@dataclass(frozen=True)
class HistogramView:
    """Counts per latency bucket on a log-spaced axis, ready to draw. ``edges_ms`` has len(counts) + 1 entries."""

    edges_ms: tuple[float, ...]
    counts: tuple[int, ...]
    p50_ms: float
    p90_ms: float
    p99_ms: float


@dataclass(frozen=True)
class ClientHealth:
    cpu_percent: float  # this process's CPU use over the interval; 100 = one core saturated
    loop_lag_ms: float  # p99 event-loop lag over the interval
    schedule_lag_ms: float  # p99 (actual - scheduled) send time, open loop only; 0 for closed loop
    bottleneck: bool  # True when the client itself may be distorting the numbers
    warning: str | None = None


@dataclass(frozen=True)
class Snapshot:
    label: str  # which server / run this is (side-by-side views key on it)
    elapsed_s: float
    phase: str  # "warmup" | "measure" | "done"
    requests_started: int
    requests_completed: int
    requests_failed: int
    in_flight: int
    output_tokens: int  # cumulative, measured phase only
    request_rate: float  # completed requests/s over the last interval
    output_token_rate: float  # output tokens/s over the last interval
    errors: dict[str, int] = field(default_factory=dict)  # by kind: connect, timeout, http_4xx, http_5xx, stream...
    metrics: dict[str, MetricSummary] = field(default_factory=dict)  # cumulative over the measured phase
    interval_metrics: dict[str, MetricSummary] = field(default_factory=dict)
    histograms: dict[str, HistogramView] = field(default_factory=dict)  # cumulative, for ttft, itl, e2el
    health: ClientHealth | None = None
    cache_hit_fraction: float | None = None
    """Share of prompt tokens the server says it served from its prefix cache (``usage.prompt_tokens_details.
    cached_tokens``, cumulative over the measured phase); None where no reply carried it."""

    @property
    def done(self) -> bool:
        return self.phase == "done"


Observer = Callable[[Snapshot], None]
