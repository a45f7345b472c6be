"""The outcome of one run: a vLLM-style summary derived from mergeable raw counters and HdrHistograms.

``summary`` is never stored on its own: it is recomputed from ``counters`` and ``histograms``, so results of several
worker processes merge exactly (counts and sums add, histograms add) and a saved file re-derives the same summary.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpload.errors import HploadError
from hpload.loadgen.hist import LatencyHistogram
from hpload.loadgen.vocabulary import (
    ALL_METRICS,
    BOUND_COUNTERS,
    LATENCY_METRICS,
    STATS,
    SUM_COUNTERS,
    Summary,
    TokenCheck,
    as_summary,
    merge_counters,
    stat_key,
)

FORMAT_VERSION = 1
__all__ = ["ALL_METRICS", "LATENCY_METRICS", "SUM_COUNTERS", "FORMAT_VERSION", "RunResult", "merge_health"]


@dataclass
class RunResult:
    label: str = ""
    counters: dict[str, float] = field(default_factory=dict)
    histograms: dict[str, LatencyHistogram] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    error_samples: dict[str, str] = field(default_factory=dict)  # one message per kind, to explain the count
    health: dict[str, Any] = field(default_factory=dict)
    server_metrics: dict[str, Any] | None = None
    gpu: dict[str, Any] | None = None  # NVML telemetry over the run (hpload.gpu.GpuSampler.summary), if recorded
    config: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    started_at: str = ""  # wall clock, ISO 8601: a label only, never used for latency
    workers: int = 1

    # ---- derived ----
    @property
    def summary(self) -> Summary:
        c = self.counters
        first, last = c.get("first_send_ns"), c.get("last_done_ns")
        duration = (last - first) / 1e9 if first is not None and last is not None and last > first else 0.0
        completed = int(c.get("completed", 0))
        out_tokens = int(c.get("total_output_tokens", 0))
        in_tokens = int(c.get("total_input_tokens", 0))
        rate = self.config.get("request_rate", "inf")
        s: dict[str, Any] = {
            "completed": completed,
            "failed": int(c.get("failed", 0)),
            "incomplete": int(c.get("incomplete", 0)),
            "duration": duration,
            "total_input_tokens": in_tokens,
            "total_output_tokens": out_tokens,
            "request_throughput": completed / duration if duration else 0.0,
            "output_throughput": out_tokens / duration if duration else 0.0,
            "total_token_throughput": (in_tokens + out_tokens) / duration if duration else 0.0,
            "request_goodput": (c.get("good", 0) / duration if duration else 0.0) if "good" in c else None,
            "max_concurrency": self.config.get("max_concurrency"),
            "request_rate": rate,
            "burstiness": self.config.get("burstiness", 1.0),
        }
        for name in ALL_METRICS:
            hist = self.histograms.get(name)
            if hist is None or hist.count == 0:
                if name in LATENCY_METRICS:
                    for stat in STATS[:-1]:  # an empty metric reads 0, as in vLLM; "max" is only written when measured
                        s[stat_key(stat, name)] = 0.0
                continue
            hist.flush()
            s[stat_key("mean", name)] = hist.moments.mean / 1000
            s[stat_key("median", name)] = hist.percentile_us(50) / 1000
            s[stat_key("std", name)] = hist.moments.std / 1000
            s[stat_key("p90", name)] = hist.percentile_us(90) / 1000
            s[stat_key("p99", name)] = hist.percentile_us(99) / 1000
            s[stat_key("max", name)] = hist.moments.high / 1000
        s["errors"] = dict(self.errors)
        return as_summary(s)

    @property
    def token_check(self) -> TokenCheck:
        """Server usage vs the client's own counts. Output: ``output_chunk_tokens`` is one per token-bearing chunk, or
        the chunks' token ids where the workload asked for ``return_token_ids``. Prompt: the client tokenizer's count of
        each synthetic prompt (completions endpoint). ``*_mismatch`` counts requests whose two counts differ."""
        c = self.counters
        return {
            "usage_reported": int(c.get("usage_reported", 0)),
            "output_usage_tokens": int(c.get("total_output_tokens", 0)),
            "output_chunk_tokens": int(c.get("output_chunk_tokens", 0)),
            "output_usage_mismatch": int(c.get("output_usage_mismatch", 0)),
            "input_checked": int(c.get("input_checked", 0)),
            "input_expected_tokens": int(c.get("input_expected_tokens", 0)),
            "input_usage_tokens": int(c.get("input_usage_tokens", 0)),
            "input_usage_mismatch": int(c.get("input_usage_mismatch", 0)),
        }

    @property
    def histogram_overflows(self) -> dict[str, int]:
        return {k: h.overflows for k, h in self.histograms.items() if h.overflows}

    # ---- persistence ----
    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "label": self.label,
            "started_at": self.started_at,
            "workers": self.workers,
            "summary": _finite(dict(self.summary)),
            "token_check": self.token_check,
            "errors": dict(self.errors),
            "error_samples": dict(self.error_samples),
            "health": self.health,
            "server_metrics": self.server_metrics,
            "gpu": self.gpu,
            "warnings": list(self.warnings),
            "config": self.config,
            "counters": dict(self.counters),
            "histograms": {k: h.to_dict() for k, h in self.histograms.items()},
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RunResult:
        if raw.get("format_version") != FORMAT_VERSION:
            raise HploadError(
                f"result format_version {raw.get('format_version')!r}: this hpload reads {FORMAT_VERSION};"
                " fix: re-run, or read it with the hpload that wrote it"
            )
        return cls(
            label=raw.get("label", ""),
            counters={k: v for k, v in raw.get("counters", {}).items()},
            histograms={k: LatencyHistogram.from_dict(v) for k, v in raw.get("histograms", {}).items()},
            errors={k: int(v) for k, v in raw.get("errors", {}).items()},
            error_samples=dict(raw.get("error_samples", {})),
            health=dict(raw.get("health", {})),
            server_metrics=raw.get("server_metrics"),
            gpu=raw.get("gpu"),
            config=dict(raw.get("config", {})),
            warnings=list(raw.get("warnings", [])),
            started_at=raw.get("started_at", ""),
            workers=int(raw.get("workers", 1)),
        )

    def save(self, path: Path | str) -> Path:
        """Write JSON atomically (temp file + ``os.replace``): a crash never leaves half a result."""
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        except OSError as err:
            raise _write_error(path, err) from None
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(self.to_dict(), fh, indent=1)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException as err:
            Path(tmp).unlink(missing_ok=True)
            if isinstance(err, OSError):
                raise _write_error(path, err) from None
            raise
        return path

    @classmethod
    def load(cls, path: Path | str) -> RunResult:
        try:
            raw = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise HploadError(f"result file {path}: cannot read it ({err}); fix: give a file hpload wrote") from err
        return cls.from_dict(raw)

    def save_hdr_log(self, path: Path | str) -> Path:
        """The histograms as a standard HdrHistogram log (format 1.2), one tagged line per metric, values in
        microseconds: readable by HdrHistogram's HistogramLogReader and plotting tools in any language."""
        path = Path(path)
        lines = [
            "#[Histogram log format version 1.2]",
            f"#[hpload {self.label or 'run'}; values in microseconds; started {self.started_at}]",
            '"StartTimestamp","Interval_Length","Interval_Max","Interval_Compressed_Histogram"',
        ]
        duration = float(self.summary["duration"])
        for name, hist in self.histograms.items():
            hist.flush()
            lines.append(f"Tag={name},0.000,{duration:.3f},{hist.hdr.get_max_value() / 1000:.3f},{hist.encode()}")
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, path)
        return path

    @classmethod
    def merge(cls, results: Iterable[RunResult]) -> RunResult:
        """One result from several workers that shared one load (same clock: perf_counter_ns is system-wide)."""
        parts = list(results)
        if not parts:
            raise ValueError("merge() needs at least one result")
        out = cls(
            label=parts[0].label,
            config=dict(parts[0].config),
            started_at=min(p.started_at for p in parts),
            workers=sum(p.workers for p in parts),
            server_metrics=parts[0].server_metrics,
            gpu=parts[0].gpu,
        )
        for p in parts:
            merge_counters(out.counters, {k: v for k, v in p.counters.items() if k in SUM_COUNTERS or k in BOUND_COUNTERS})
            for name, hist in p.histograms.items():
                out.histograms.setdefault(name, LatencyHistogram()).add(hist)
            for kind, n in p.errors.items():
                out.errors[kind] = out.errors.get(kind, 0) + n
            for kind, msg in p.error_samples.items():
                out.error_samples.setdefault(kind, msg)
            out.warnings += [w for w in p.warnings if w not in out.warnings]
        out.health = merge_health([p.health for p in parts])
        return out


def merge_health(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """CPU adds up across processes; lags take the worst worker; any bottleneck flags the whole run."""
    if not parts:
        return {}
    out: dict[str, Any] = {
        "cpu_percent": sum(float(p.get("cpu_percent", 0.0)) for p in parts),
        "cpu_s": sum(float(p.get("cpu_s", 0.0)) for p in parts),
        "loop_lag_p99_ms": max(float(p.get("loop_lag_p99_ms", 0.0)) for p in parts),
        "loop_lag_max_ms": max(float(p.get("loop_lag_max_ms", 0.0)) for p in parts),
        "schedule_lag_p99_ms": max(float(p.get("schedule_lag_p99_ms", 0.0)) for p in parts),
        "bottleneck": any(bool(p.get("bottleneck")) for p in parts),
        "peak_rss_mb": max(float(p.get("peak_rss_mb", 0.0)) for p in parts),
    }
    warnings = [w for p in parts for w in p.get("warnings", [])]
    out["warnings"] = list(dict.fromkeys(warnings))
    return out


def _finite(d: dict[str, Any]) -> dict[str, Any]:
    """JSON has no inf/nan: vLLM writes rate inf as the string "inf", so do the same."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        out[k] = str(v) if isinstance(v, float) and not math.isfinite(v) else v
    return out


def format_table(result: RunResult) -> str:
    """The console summary: throughput lines, then p50/p90/p99 per metric in milliseconds."""
    s = result.summary
    lines = [f"== {result.label or 'run'} ==" if result.label else "== run =="]
    lines.append(
        f"completed {s['completed']}  failed {s['failed']}  duration {s['duration']:.2f} s  "
        f"req/s {s['request_throughput']:.2f}  out tok/s {s['output_throughput']:.1f}  "
        f"total tok/s {s['total_token_throughput']:.1f}"
    )
    if s.get("request_goodput") is not None:
        lines.append(f"goodput {s['request_goodput']:.2f} req/s")
    lines.append(f"{'metric':<20}{'mean':>10}{'p50':>10}{'p90':>10}{'p99':>10}{'max':>10}   (ms)")
    by_key: dict[str, Any] = dict(s)  # per-metric keys are computed (stat_key), which a TypedDict cannot index
    for name in ALL_METRICS:
        if stat_key("mean", name) not in by_key or (name not in LATENCY_METRICS and not by_key.get(stat_key("p99", name))):
            continue
        cells = "".join(f"{by_key.get(stat_key(stat, name), 0.0):>10.2f}" for stat in ("mean", "median", "p90", "p99", "max"))
        lines.append(f"{name:<20}{cells}")
    if result.errors:
        lines.append("errors: " + ", ".join(f"{k} {v}" for k, v in sorted(result.errors.items())))
    tc = result.token_check
    if tc["output_usage_mismatch"] or tc["input_usage_mismatch"]:
        lines.append(
            f"token check: output usage {tc['output_usage_tokens']} vs chunks {tc['output_chunk_tokens']};"
            f" prompt usage {tc['input_usage_tokens']} vs tokenizer {tc['input_expected_tokens']}"
        )
    sm = result.server_metrics or {}
    if sm.get("ttft_mean_ms") is not None:
        lines.append(
            f"server: ttft mean {sm['ttft_mean_ms']:.2f} ms (client {s['mean_ttft_ms']:.2f})"
            + (f"  tpot mean {sm['tpot_mean_ms']:.2f}" if sm.get("tpot_mean_ms") is not None else "")
            + (f"  queue mean {sm['queue_mean_ms']:.2f}" if sm.get("queue_mean_ms") is not None else "")
        )
    h = result.health
    if h:
        lines.append(
            f"client: cpu {h.get('cpu_percent', 0.0):.0f}%  loop lag p99 {h.get('loop_lag_p99_ms', 0.0):.1f} ms"
            f"  schedule lag p99 {h.get('schedule_lag_p99_ms', 0.0):.1f} ms"
        )
    for w in result.warnings + list(h.get("warnings", [])):
        lines.append(f"warning: {w}")
    return "\n".join(lines)


def _write_error(path: Path, err: OSError) -> HploadError:
    """A full disk or a read-only directory is the user's to fix: one line, not a traceback."""
    return HploadError(
        f"result file {path}: cannot write it ({err.strerror or err}); fix: free space on that disk "
        "or choose another results directory"
    )
