"""The result vocabulary: every key hpload writes into a result's summary, the rule that merges counters, and the
metric names. One home, so a new metric is named once and every reader is checked against it.

Summary keys keep vLLM ``bench serve``'s JSON names (``mean_ttft_ms``, ``p99_tpot_ms``, ``request_goodput`` ...), so
a result file reads like vLLM's. :class:`Summary` is the typed form the type checker holds readers to;
tests/test_vocabulary.py checks that every key a real run writes is in it. SLO limits are evaluated in
:mod:`hpload.loadgen.slo`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping
from typing import Any, TypedDict

# The four vLLM bench serve metrics, then the open-loop ones measured from the scheduled send time.
LATENCY_METRICS = ("ttft", "tpot", "itl", "e2el")
SCHEDULE_METRICS = ("ttft_from_schedule", "e2el_from_schedule", "schedule_lag")
# Per request, from the server's own timings where it gives them (hpload.loadgen.server_timing): client TTFT minus
# server TTFT, the server's queue, and the client TTFT neither the queue nor the engine spent.
SERVER_TIMING_METRICS = ("ttft_gap", "server_queue", "ttft_outside_engine")
ALL_METRICS = LATENCY_METRICS + SCHEDULE_METRICS + SERVER_TIMING_METRICS
STATS = ("mean", "median", "std", "p90", "p99", "max")  # p50 is written "median", as vLLM does


def stat_key(stat: str, metric: str) -> str:
    """The summary key of one statistic of one metric, in milliseconds: ``stat_key("p99", "ttft")`` is
    ``p99_ttft_ms`` (``p50`` is spelled ``median``)."""
    return f"{'median' if stat == 'p50' else stat}_{metric}_ms"


class Summary(TypedDict, total=False):
    """A run's summary (``RunResult.summary``, the ``summary`` object of a result file)."""

    completed: int
    failed: int
    incomplete: int
    duration: float  # seconds, first send to last token
    total_input_tokens: int
    total_output_tokens: int
    request_throughput: float
    output_throughput: float
    total_token_throughput: float
    request_goodput: float | None  # None when the scenario has no per-request SLO limit
    good_fraction: float | None  # requests within the per-request limits / all measured (SLO.min_good_fraction)
    max_concurrency: int | None
    request_rate: float | str  # "inf" in JSON for a closed loop, as vLLM writes it
    burstiness: float
    errors: dict[str, int]
    mean_ttft_ms: float
    median_ttft_ms: float
    std_ttft_ms: float
    p90_ttft_ms: float
    p99_ttft_ms: float
    max_ttft_ms: float
    mean_tpot_ms: float
    median_tpot_ms: float
    std_tpot_ms: float
    p90_tpot_ms: float
    p99_tpot_ms: float
    max_tpot_ms: float
    mean_itl_ms: float
    median_itl_ms: float
    std_itl_ms: float
    p90_itl_ms: float
    p99_itl_ms: float
    max_itl_ms: float
    mean_e2el_ms: float
    median_e2el_ms: float
    std_e2el_ms: float
    p90_e2el_ms: float
    p99_e2el_ms: float
    max_e2el_ms: float
    mean_ttft_from_schedule_ms: float
    median_ttft_from_schedule_ms: float
    std_ttft_from_schedule_ms: float
    p90_ttft_from_schedule_ms: float
    p99_ttft_from_schedule_ms: float
    max_ttft_from_schedule_ms: float
    mean_e2el_from_schedule_ms: float
    median_e2el_from_schedule_ms: float
    std_e2el_from_schedule_ms: float
    p90_e2el_from_schedule_ms: float
    p99_e2el_from_schedule_ms: float
    max_e2el_from_schedule_ms: float
    mean_schedule_lag_ms: float
    median_schedule_lag_ms: float
    std_schedule_lag_ms: float
    p90_schedule_lag_ms: float
    p99_schedule_lag_ms: float
    max_schedule_lag_ms: float
    # written only when the server gave per-request timings (vLLM --enable-per-request-metrics, the hf wrapper)
    mean_ttft_gap_ms: float
    median_ttft_gap_ms: float
    std_ttft_gap_ms: float
    p90_ttft_gap_ms: float
    p99_ttft_gap_ms: float
    max_ttft_gap_ms: float
    mean_server_queue_ms: float
    median_server_queue_ms: float
    std_server_queue_ms: float
    p90_server_queue_ms: float
    p99_server_queue_ms: float
    max_server_queue_ms: float
    mean_ttft_outside_engine_ms: float
    median_ttft_outside_engine_ms: float
    std_ttft_outside_engine_ms: float
    p90_ttft_outside_engine_ms: float
    p99_ttft_outside_engine_ms: float
    max_ttft_outside_engine_ms: float


SUMMARY_KEYS: frozenset[str] = frozenset(Summary.__annotations__)


class TokenCheck(TypedDict):
    """Server-reported usage against the client's own counts (``RunResult.token_check``)."""

    usage_reported: int
    output_usage_tokens: int
    output_chunk_tokens: int
    output_usage_mismatch: int
    input_checked: int
    input_expected_tokens: int
    input_usage_tokens: int
    input_usage_mismatch: int


# The top-level keys of a result file (RunResult.to_dict), and of its client-health object.
RESULT_KEYS = frozenset({
    "format_version", "label", "started_at", "workers", "summary", "token_check", "errors", "error_samples", "health",
    "server_metrics", "gpu", "warnings", "config", "counters", "histograms",
})
HEALTH_KEYS = frozenset({
    "cpu_percent", "cpu_s", "loop_lag_p99_ms", "loop_lag_max_ms", "schedule_lag_p99_ms", "bottleneck", "peak_rss_mb",
    # host starvation (hpload.loadgen.starvation): run-queue wait of the client, the share of loop lag spent waiting
    # for a CPU other processes held, and the verdict that the host, not the client, was the bottleneck
    "runq_wait_percent", "loop_lag_waiting_share", "starved",
    "warnings", "busy_intervals", "intervals",  # the last two: single-process runs only (merge_health drops them)
    "start_late_s",  # one shard of a load across hosts: how late it reached the common start instant
    "shards", "flagged",  # a merged multi-host result (hpload merge): one ShardEntry per shard; any shard flagged
})
# A capacity record (``capacity/<label>.json``, hpload.scenarios.capacity_run) and each of its probes.
CAPACITY_KEYS = frozenset({
    "label", "capacity_rps", "output_tok_s", "interval", "precision", "reason", "non_monotone", "latency_at_capacity",
    "slo", "capacity", "probes", "probe_seconds", "wall_s", "server_crashes", "workload", "server", "versions",
    "tune",  # a capacity-tuning trial's context (hpload tune, objective capacity)
})
PROBE_KEYS = frozenset({
    "rate", "kind", "replicate", "seed", "passed", "violations", "stopped_early", "error", "seconds", "stats",
    "point_id", "before",
})
# A capacity-tuning study (``tune_capacity/<label>.json``, hpload.scenarios.capacity_tune) and each of its trials.
CAPACITY_STUDY_KEYS = frozenset({
    "label", "restarts", "trials", "study", "slo", "defaults", "engine_defaults", "default_capacity", "best",
    "gain_over_default",
})
CAPACITY_TRIAL_KEYS = frozenset({
    "label", "stage", "capacity_rps", "interval", "coarse_interval", "probe_seconds", "error", "reason", "record",
    "params", "default", "best_so_far", "restarts",
})

# The server's own view (RunResult.server_metrics, from Prometheus: hpload.loadgen.prom.server_side): per histogram
# a count, a mean, and p50/p99 as an interval ``*_ms_bounds`` [low, high] (hpload.loadgen.prom_quantile), with the
# point value ``*_ms`` only where that interval is narrow; then the token and request counters, and the server's
# processes.
SERVER_HISTOGRAMS = ("ttft", "tpot", "itl", "queue", "e2el")
SERVER_COUNTERS = ("generation_tokens", "prompt_tokens", "requests_succeeded", "prefix_cache_queries", "prefix_cache_hits")
SERVER_METRICS_KEYS = frozenset(
    [f"{h}_{k}" for h in SERVER_HISTOGRAMS for k in ("count", "mean_ms", "p50_ms", "p99_ms", "p50_ms_bounds",
                                                     "p99_ms_bounds")]
    + list(SERVER_COUNTERS)
    + ["processes"]  # the launched server's processes and their CPU use (hpload.servers.saturation)
)

# The keys of ``config["workload_stats"]`` (shaped workloads, hpload.loadgen.replay / sessions; docs/workloads.md):
# what the trace or prefix groups were, the realised lengths, send figures, prefix-cache shares, sessions and turns.
WORKLOAD_STATS_KEYS = frozenset({
    "format", "rows", "skipped", "clipped", "context", "chat_template_tokens",  # a trace
    "prefix_groups", "prefix_len", "suffix_len", "requests", "ideal_hit_fraction",  # shared-prefix groups
    "input_len", "output_len", "sends", "prefix_cache", "server_prefix_cache", "sessions", "turns",
})


# ---- one load across hosts (hpload run --shard, hpload merge) ----
class ShardMeta(TypedDict):
    """A shard's ``shard.json``, written last in its results directory (a directory without it is unfinished)."""

    run_id: str
    scenario_hash: str
    index: int
    count: int
    host: str
    start_at: float | None  # Unix seconds, as given to --start-at
    start_mono_ns: int | None  # the same instant on this host's perf_counter_ns clock
    start_late_s: float | None
    point_id: str
    status: str


class ShardEntry(TypedDict):
    """One shard in a merged result's ``health["shards"]`` and in ``shards.json``."""

    index: int
    host: str | None
    dir: str
    start_late_s: float | None
    request_throughput: float
    completed: int
    health: dict[str, Any]  # that shard's own client health (HEALTH_KEYS)


class ShardsInfo(TypedDict):
    """``shards.json`` beside a merged result: which shards, how each fared, and why the run is flagged."""

    run_id: str
    scenario_hash: str
    count: int
    start_at: float | None
    late_limit_s: float
    achieved_rate_sum: float  # the shards' own request rates added up (vs the merged request_throughput)
    flagged: bool
    flags: list[str]  # one line per late or client-bound shard
    shards: list[ShardEntry]


SHARD_META_KEYS = frozenset(ShardMeta.__annotations__)
SHARD_ENTRY_KEYS = frozenset(ShardEntry.__annotations__)
SHARDS_INFO_KEYS = frozenset(ShardsInfo.__annotations__)

# ---- counters: the merge rule ----
# Counters that add across workers and deltas ...
SUM_COUNTERS = (
    "completed",
    "failed",
    "incomplete",
    "warmup",
    "total_input_tokens",
    "total_output_tokens",
    "good",
    "usage_reported",
    "output_chunk_tokens",
    "output_usage_mismatch",
    "input_checked",
    "input_expected_tokens",
    "input_usage_tokens",
    "input_usage_mismatch",
    # usage.prompt_tokens_details.cached_tokens: replies that carried it, their cached and their prompt tokens
    "cached_reported",
    "cached_prompt_tokens",
    "cached_reported_prompt_tokens",
)
# ... and the time bounds, which take the earliest first send and the latest finish instead.
BOUND_COUNTERS: dict[str, Callable[[float, float], float]] = {"first_send_ns": min, "last_done_ns": max}


def cache_hit_fraction(counters: Mapping[str, float]) -> float | None:
    """Share of prompt tokens the server says it served from its prefix cache, over the replies that reported it;
    None where none did."""
    prompt = counters.get("cached_reported_prompt_tokens", 0)
    return counters.get("cached_prompt_tokens", 0) / prompt if counters.get("cached_reported") and prompt else None


def merge_counters(into: MutableMapping[str, float], part: Mapping[str, float]) -> None:
    """Fold one worker's (or one delta's) counters into ``into``: sums add, bounds take min/max. The one rule used
    by live deltas (Recorder.absorb) and by final results (RunResult.merge)."""
    for key, value in part.items():
        pick = BOUND_COUNTERS.get(key)
        if pick is None:
            into[key] = into.get(key, 0) + value
        else:
            into[key] = pick(into[key], value) if key in into else value


def as_summary(values: dict[str, Any]) -> Summary:
    """A summary built with computed keys, checked against the vocabulary (a typo fails here, not in a reader)."""
    unknown = set(values) - SUMMARY_KEYS
    if unknown:
        raise KeyError(f"summary keys outside the vocabulary: {sorted(unknown)}")
    return values  # type: ignore[return-value]
