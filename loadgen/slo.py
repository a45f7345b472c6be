"""The one SLO evaluator. Goodput (per request, in the recorder), run-level SLO checks (``SLO.violations``, the TUI),
tuning constraints (``slo_constraints``) and ``[thresholds]`` all judge limits here, so they cannot disagree.

A :class:`Check` is one limit against one run: whether it holds, the value, and its excess (<= 0 meets it; Optuna's
constraint convention), and the line a person reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from hpload.loadgen.vocabulary import stat_key

if TYPE_CHECKING:
    from hpload.loadgen.specs import SLO

Op = Literal["<", "<=", ">", ">=", "=="]

# SLO percentile limit (as written in a scenario's [slo]) -> the summary key it bounds.
PERCENTILE_LIMITS = {
    name: stat_key(name.split("_")[1], name.split("_")[0])
    for name in ("ttft_p50_ms", "ttft_p99_ms", "tpot_p50_ms", "tpot_p99_ms", "itl_p99_ms", "e2el_p99_ms")
}


@dataclass(frozen=True)
class Limit:
    """``key op limit`` on a summary value, e.g. ``p99_ttft_ms <= 500``."""

    key: str
    op: Op
    limit: float

    def holds(self, value: float) -> bool:
        return {
            "<": value < self.limit,
            "<=": value <= self.limit,
            ">": value > self.limit,
            ">=": value >= self.limit,
            "==": value == self.limit,
        }[self.op]


@dataclass(frozen=True)
class Check:
    name: str  # the limit as the user wrote it: "ttft_p99_ms", "max_error_rate", "min_goodput"
    ok: bool
    value: float
    limit: float
    excess: float  # <= 0 meets the limit
    line: str  # for people: "ttft_p99_ms 812.3 > 500"


def request_meets(slo: SLO, ttft_ns: int, tpot_ns: int | None, e2el_ns: int) -> bool:
    """True when one successful request meets every per-request limit (goodput; errors always miss)."""
    if slo.ttft_ms is not None and ttft_ns > slo.ttft_ms * 1e6:
        return False
    if slo.tpot_ms is not None and tpot_ns is not None and tpot_ns > slo.tpot_ms * 1e6:
        return False
    return not (slo.e2el_ms is not None and e2el_ns > slo.e2el_ms * 1e6)


def evaluate(slo: SLO, summary: Mapping[str, Any]) -> list[Check]:
    """Every run-level limit of ``slo`` against one summary, met or not."""
    out: list[Check] = []
    for name, key in PERCENTILE_LIMITS.items():
        limit = getattr(slo, name)
        value = summary.get(key)
        if limit is not None and isinstance(value, int | float):
            v = float(value)
            out.append(Check(name, v <= limit, v, limit, (v - limit) / limit, f"{name} {v:.1f} > {limit:g}"))
    done, failed = int(summary.get("completed", 0) or 0), int(summary.get("failed", 0) or 0)
    if slo.max_error_rate is not None:
        rate = failed / (done + failed) if done + failed else 1.0
        # No request at all is not an error-rate breach on its own; the "completed 0" check below says it.
        ok = rate <= slo.max_error_rate or not done + failed
        out.append(Check("max_error_rate", ok, rate, slo.max_error_rate, rate - slo.max_error_rate,
                         f"max_error_rate {rate:.3f} > {slo.max_error_rate:g}"))
    if slo.min_goodput is not None:
        goodput = float(summary.get("request_goodput") or 0.0)
        out.append(Check("min_goodput", goodput >= slo.min_goodput, goodput, slo.min_goodput,
                         (slo.min_goodput - goodput) / max(slo.min_goodput, 1e-9),
                         f"min_goodput {goodput:.2f} < {slo.min_goodput:g}"))
    return out


def violations(slo: SLO, summary: Mapping[str, Any]) -> list[str]:
    """Each broken limit as one line; empty when the run passes. A run where nothing succeeded fails unless the
    SLO says how many errors it tolerates."""
    checks = evaluate(slo, summary)
    out = [c.line for c in checks if not c.ok and c.name != "min_goodput"]
    if slo.max_error_rate is None and int(summary.get("completed", 0) or 0) == 0:
        out.append("completed 0: no request succeeded")
    out += [c.line for c in checks if not c.ok and c.name == "min_goodput"]
    return out


def slo_constraints(slo: SLO, summary: Mapping[str, Any]) -> dict[str, float]:
    """Each run-level limit as its excess (relative for latency and goodput, absolute for the error rate); <= 0 meets
    it. The tuner's constraints."""
    return {c.name: c.excess for c in evaluate(slo, summary)}
