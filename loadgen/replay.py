"""What a shaped workload really did: requested vs achieved arrival rate, schedule delay, how closely the sent
inter-arrival gaps follow the schedule's, and the realised prompt and output lengths.

Kept in ``result.config["workload_stats"]`` (a result file's free-form config), so results stay mergeable and old
readers are unaffected.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from hpload.loadgen.lengths import summarize
from hpload.loadgen.result import RunResult
from hpload.loadgen.vocabulary import cache_hit_fraction

if TYPE_CHECKING:  # workload builds sessions, whose run is a LoadRun, which attaches these stats
    from hpload.loadgen.prepared import PreparedRequest


def ks_statistic(a: list[float] | np.ndarray, b: list[float] | np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the two empirical CDFs (0 = identical)."""
    xa, xb = np.sort(np.asarray(a, dtype=float)), np.sort(np.asarray(b, dtype=float))
    if not len(xa) or not len(xb):
        return float("nan")
    grid = np.concatenate([xa, xb])
    fa = np.searchsorted(xa, grid, side="right") / len(xa)
    fb = np.searchsorted(xb, grid, side="right") / len(xb)
    return float(np.max(np.abs(fa - fb)))


def send_summary(sends: Sequence[int] | Sequence[tuple[int, int]]) -> dict[str, Any]:
    """``sends``: (scheduled_ns, sent_ns) of every open-loop request, warm-up included, as pairs or flat."""
    arr = np.asarray(sends, dtype=np.int64).reshape(-1, 2)
    if len(arr) < 2:
        return {"sent": len(arr)}
    arr = arr[np.argsort(arr[:, 0], kind="stable")]
    sched, sent = arr[:, 0], np.sort(arr[:, 1])
    delay_ms = (arr[:, 1] - arr[:, 0]) / 1e6
    n = len(arr)
    span_sched = (sched[-1] - sched[0]) / 1e9
    span_sent = (sent[-1] - sent[0]) / 1e9
    gaps_sched, gaps_sent = np.diff(sched) / 1e6, np.diff(sent) / 1e6
    return {
        "sent": n,
        "requested_rate": (n - 1) / span_sched if span_sched > 0 else None,
        "achieved_rate": (n - 1) / span_sent if span_sent > 0 else None,
        "schedule_delay_ms": {
            "p50": float(np.percentile(delay_ms, 50)), "p90": float(np.percentile(delay_ms, 90)),
            "p99": float(np.percentile(delay_ms, 99)), "max": float(delay_ms.max()),
        },
        "interarrival_ks": ks_statistic(gaps_sched, gaps_sent),
        "mean_gap_ms": {"scheduled": float(gaps_sched.mean()), "sent": float(gaps_sent.mean())},
    }  # fmt: skip


def attach(result: RunResult, requests: list[PreparedRequest], sends: Sequence[int] | None) -> None:
    stats: dict[str, Any] = dict(getattr(requests, "stats", {}) or {})
    ins = [r.input_len for r in requests if r.input_len is not None]
    outs = [r.output_len for r in requests if r.output_len is not None]
    if ins:
        stats["input_len"] = summarize(ins)
    if outs:
        stats["output_len"] = summarize(outs)
    if sends:
        stats["sends"] = send_summary(sends)
    cache = _prefix_cache(result)
    if cache:
        stats["prefix_cache"] = cache
    result.warnings += list(getattr(requests, "warnings", []) or [])
    if stats:
        result.config["workload_stats"] = stats


def _prefix_cache(result: RunResult) -> dict[str, Any] | None:
    """The share of prompt tokens the server says it served from cache (``usage.prompt_tokens_details``)."""
    c = result.counters
    if not c.get("cached_reported"):
        return None
    cached, prompt = c.get("cached_prompt_tokens", 0), c.get("cached_reported_prompt_tokens", 0)
    return {
        "cached_tokens": int(cached),
        "prompt_tokens": int(prompt),
        "hit_fraction": cache_hit_fraction(c),
    }


def attach_server(result: RunResult) -> None:
    """The server's prefix-cache counters over the run (vLLM's ``prefix_cache_queries``/``hits``, in tokens)."""
    server = result.server_metrics or {}
    if server.get("prefix_cache_queries"):
        result.config.setdefault("workload_stats", {})["server_prefix_cache"] = {
            "queries": server["prefix_cache_queries"], "hits": server.get("prefix_cache_hits", 0),
            "hit_fraction": server.get("prefix_cache_hits", 0) / server["prefix_cache_queries"],
        }  # fmt: skip


def merge_stats(pieces: list[RunResult], merged: RunResult) -> None:
    """``workers > 1``: one ``workload_stats`` from the workers'. Lengths and trace findings are the same in every
    worker (each builds the same requests); send figures add (rates, counts) or take the worst (delay percentiles and
    the KS statistic, each worker's own), and the prefix-cache share comes from the merged counters."""
    parts = [dict(p.config.get("workload_stats") or {}) for p in pieces]
    if not any(parts):
        return
    stats = next(p for p in parts if p)
    sends = [p["sends"] for p in parts if p.get("sends", {}).get("requested_rate")]
    if sends:
        stats["sends"] = {
            "sent": sum(s["sent"] for s in sends),
            "requested_rate": sum(s["requested_rate"] for s in sends),
            "achieved_rate": sum(s.get("achieved_rate") or 0.0 for s in sends),
            "schedule_delay_ms": {
                k: max(s["schedule_delay_ms"][k] for s in sends) for k in ("p50", "p90", "p99", "max")
            },
            "interarrival_ks": max(s["interarrival_ks"] for s in sends),
            "per_worker": True,
        }
    stats.pop("prefix_cache", None)
    cache = _prefix_cache(merged)
    if cache:
        stats["prefix_cache"] = cache
    merged.config["workload_stats"] = stats
