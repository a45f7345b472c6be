"""Folds finished requests into counters and histograms; cuts interval snapshots; exports and absorbs deltas.

One ``Recorder`` per process. A worker process sends ``delta()`` a few times a second (interval histograms encoded,
counter differences); the parent ``absorb``s them into its own recorder, so the live view of a multi-worker run is
built by the same code as a single-process one. Recording never keeps per-request objects: memory stays flat.
"""

from __future__ import annotations

from time import perf_counter_ns
from typing import Any

from hpload.loadgen import server_timing
from hpload.loadgen.client import RequestRecord
from hpload.loadgen.hist import LatencyHistogram
from hpload.loadgen.result import RunResult
from hpload.loadgen.slo import request_meets
from hpload.loadgen.snapshot import ClientHealth, Snapshot
from hpload.loadgen.specs import SLO
from hpload.loadgen.vocabulary import (
    ALL_METRICS,
    BOUND_COUNTERS,
    LATENCY_METRICS,
    SUM_COUNTERS,
    cache_hit_fraction,
    merge_counters,
)

_VIEW_METRICS = ("ttft", "itl", "tpot", "e2el")
# the server's per-request timings ride along only where the server gives them (they have no count otherwise)
_SNAPSHOT_METRICS = (*LATENCY_METRICS, *server_timing.METRICS)
_INTERVAL_METRICS = (*LATENCY_METRICS, "schedule_lag")


class Recorder:
    def __init__(self, label: str, slo: SLO | None = None, stream: bool = True, export: bool = False) -> None:
        self.label = label
        self.slo = slo if slo is not None and slo.has_request_limits else None
        self.stream = stream
        self.cum = {name: LatencyHistogram() for name in ALL_METRICS}
        self.interval = {name: LatencyHistogram() for name in _INTERVAL_METRICS}
        self.counters: dict[str, float] = dict.fromkeys(SUM_COUNTERS, 0)
        if self.slo is None:
            del self.counters["good"]
        self.errors: dict[str, int] = {}
        self.error_samples: dict[str, str] = {}
        self.started = 0  # sends so far, warm-up included
        self.in_flight = 0
        self.warming = True
        self._iv_completed = 0
        self._iv_tokens = 0
        self._iv_start_ns = perf_counter_ns()
        self._t0_ns = self._iv_start_ns
        self._sent_counters: dict[str, float] = dict(self.counters)
        self._sent_errors: dict[str, int] = {}
        # Worker processes also keep what changed since the last delta; a single process skips that copy.
        self._delta_hists = {name: LatencyHistogram() for name in ALL_METRICS} if export else {}
        self._levels: dict[int, tuple[int, int]] = {}

    # ---- per request (hot path) ----
    def record(self, rec: RequestRecord) -> None:
        c = self.counters
        if rec.warmup:
            c["warmup"] += 1
            return
        self.warming = False
        end_ns = rec.last_ns if rec.ok and rec.last_ns else rec.done_ns
        first = c.get("first_send_ns")
        if first is None or rec.send_ns < first:
            c["first_send_ns"] = rec.send_ns
        if end_ns > c.get("last_done_ns", 0):
            c["last_done_ns"] = end_ns
        if rec.scheduled_ns:
            self._add("schedule_lag", (rec.send_ns - rec.scheduled_ns) // 1000, interval=True)
        if not rec.ok:
            kind = rec.error_kind or "other"
            c["failed"] += 1
            self.errors[kind] = self.errors.get(kind, 0) + 1
            self.error_samples.setdefault(kind, rec.error_msg)
            return
        c["completed"] += 1
        self._iv_completed += 1
        ttft_ns, e2el_ns, tpot_ns = rec.ttft_ns, rec.e2el_ns, rec.tpot_ns
        self._add("ttft", ttft_ns // 1000, interval=True)
        self._add("e2el", e2el_ns // 1000, interval=True)
        if rec.server is not None:
            server_timing.record(self._add, rec.server, ttft_ns)
        if tpot_ns is not None:
            self._add("tpot", tpot_ns // 1000, interval=True)
        if rec.itl_ns:
            itl_us = [v // 1000 for v in rec.itl_ns]
            self.cum["itl"].extend_us(itl_us)
            self.interval["itl"].extend_us(itl_us)
            if self._delta_hists:
                self._delta_hists["itl"].extend_us(itl_us)
        if rec.scheduled_ns:
            self._add("ttft_from_schedule", (rec.first_ns - rec.scheduled_ns) // 1000)
            self._add("e2el_from_schedule", (rec.last_ns - rec.scheduled_ns) // 1000)
        out = rec.output_tokens
        c["total_output_tokens"] += out
        self._iv_tokens += out
        c["output_chunk_tokens"] += rec.chunk_tokens
        if rec.usage_out is not None:
            c["usage_reported"] += 1
            if self.stream and rec.usage_out != rec.chunk_tokens:
                c["output_usage_mismatch"] += 1
        prompt = rec.usage_in if rec.usage_in is not None else rec.expected_in
        c["total_input_tokens"] += prompt or 0
        if rec.cached_in is not None:
            c["cached_reported"] += 1
            c["cached_prompt_tokens"] += rec.cached_in
            c["cached_reported_prompt_tokens"] += rec.usage_in or 0
        if rec.usage_in is not None and rec.expected_in is not None:
            c["input_checked"] += 1
            c["input_expected_tokens"] += rec.expected_in
            c["input_usage_tokens"] += rec.usage_in
            if rec.usage_in != rec.expected_in:
                c["input_usage_mismatch"] += 1
        if self.slo is not None and request_meets(self.slo, ttft_ns, tpot_ns, e2el_ns):
            c["good"] += 1

    def _add(self, name: str, value_us: int, interval: bool = False) -> None:
        self.cum[name].record_us(value_us)
        if self._delta_hists:
            self._delta_hists[name].record_us(value_us)
        if interval:
            self.interval[name].record_us(value_us)

    # ---- snapshots ----
    def snapshot(self, phase: str, health: ClientHealth | None, elapsed_s: float | None = None) -> Snapshot:
        """The state now, plus rates and distributions over the interval since the previous snapshot."""
        now = perf_counter_ns()
        iv_s = max((now - self._iv_start_ns) / 1e9, 1e-9)
        c = self.counters
        request_rate, token_rate = self._iv_completed / iv_s, self._iv_tokens / iv_s
        if phase == "done":
            # The final snapshot closes an interval of any length (often a few milliseconds), so its interval rates
            # are noise: report what the whole measured phase achieved instead.
            first, last = c.get("first_send_ns"), c.get("last_done_ns")
            if first is not None and last is not None and last > first:
                span_s = (last - first) / 1e9
                request_rate, token_rate = c["completed"] / span_s, c["total_output_tokens"] / span_s
        snap = Snapshot(
            label=self.label,
            elapsed_s=elapsed_s if elapsed_s is not None else (now - self._t0_ns) / 1e9,
            phase=phase,
            requests_started=self.started,
            requests_completed=int(c["completed"]),
            requests_failed=int(c["failed"]),
            in_flight=self.in_flight,
            output_tokens=int(c["total_output_tokens"]),
            request_rate=request_rate,
            output_token_rate=token_rate,
            errors=dict(self.errors),
            metrics={m: self.cum[m].summary() for m in _SNAPSHOT_METRICS if self.cum[m].count},
            interval_metrics={m: self.interval[m].summary() for m in LATENCY_METRICS if self.interval[m].count},
            histograms={m: self.cum[m].view() for m in _VIEW_METRICS if self.cum[m].count},
            health=health,
            cache_hit_fraction=cache_hit_fraction(c),
        )
        for h in self.cum.values():
            h.flush()  # schedule metrics are not in the snapshot, but their buffers must not grow
        for h in self.interval.values():
            h.reset()
        self._iv_completed = self._iv_tokens = 0
        self._iv_start_ns = now
        return snap

    def fold(self) -> None:
        """Fold buffered samples into the histograms and start a new interval, without building a snapshot."""
        for h in self.cum.values():
            h.flush()
        for h in self.interval.values():
            h.reset()
        for h in self._delta_hists.values():
            h.flush()
        self._iv_completed = self._iv_tokens = 0
        self._iv_start_ns = perf_counter_ns()

    def interval_schedule_lag_p99_ms(self) -> float:
        return self.interval["schedule_lag"].percentile_us(99) / 1000

    # ---- worker <-> parent ----
    def delta(self) -> dict[str, Any]:
        """What changed since the previous delta, small enough to send a few times a second."""
        self.fold()
        counters = {k: v - self._sent_counters.get(k, 0) for k, v in self.counters.items() if k not in BOUND_COUNTERS}
        bounds = {k: self.counters[k] for k in BOUND_COUNTERS if k in self.counters}
        errors = {k: v - self._sent_errors.get(k, 0) for k, v in self.errors.items()}
        self._sent_counters = dict(self.counters)
        self._sent_errors = dict(self.errors)
        hists = {k: h.to_dict() for k, h in self._delta_hists.items() if h.count}
        for h in self._delta_hists.values():
            h.reset()
        return {
            "counters": {k: v for k, v in counters.items() if v},
            "bounds": bounds,
            "errors": {k: v for k, v in errors.items() if v},
            "error_samples": dict(self.error_samples),
            "hists": hists,
            "started": self.started,
            "in_flight": self.in_flight,
            "warming": self.warming,
        }

    def absorb(self, delta: dict[str, Any], source: int = 0) -> None:
        """Fold one worker's delta in. ``started``/``in_flight`` are per-worker levels, kept by ``source``."""
        for k, v in delta["counters"].items():
            self._iv_completed += int(v) if k == "completed" else 0
            self._iv_tokens += int(v) if k == "total_output_tokens" else 0
        merge_counters(self.counters, {**delta["counters"], **delta["bounds"]})
        for k, v in delta["errors"].items():
            self.errors[k] = self.errors.get(k, 0) + int(v)
        for k, msg in delta["error_samples"].items():
            self.error_samples.setdefault(k, msg)
        for name, raw in delta["hists"].items():
            hist = LatencyHistogram.from_dict(raw)
            self.cum[name].add(hist)
            if name in self.interval:
                self.interval[name].add(hist)
        self._levels[source] = (int(delta["started"]), int(delta["in_flight"]))
        self.started = sum(s for s, _ in self._levels.values())
        self.in_flight = sum(f for _, f in self._levels.values())
        self.warming = self.warming and bool(delta["warming"])

    # ---- final ----
    def result(self, config: dict[str, Any], started_at: str) -> RunResult:
        for h in self.cum.values():
            h.flush()
        return RunResult(
            label=self.label,
            counters=dict(self.counters),
            histograms={k: h for k, h in self.cum.items() if h.count},
            errors=dict(self.errors),
            error_samples=dict(self.error_samples),
            config=config,
            started_at=started_at,
        )


