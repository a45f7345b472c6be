"""Runs side by side: one column per run, one row per metric, each with its change against the first column.

Inputs are what hpload writes: a result file (``points/<id>.json``), a point record (``.point.json``) or a whole
results directory (every finished point). Only the summaries are compared, so this needs no histograms.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpload.errors import HploadError
from hpload.scenarios.results import POINT_SUFFIX, ResultStore

# (summary key, heading, higher is better)
ROWS: tuple[tuple[str, str, bool], ...] = (
    ("completed", "completed requests", True),
    ("failed", "failed requests", False),
    ("request_throughput", "requests/s", True),
    ("output_throughput", "output tokens/s", True),
    ("request_goodput", "goodput (req/s in SLO)", True),
    ("median_ttft_ms", "ttft p50 (ms)", False),
    ("p99_ttft_ms", "ttft p99 (ms)", False),
    ("median_tpot_ms", "tpot p50 (ms)", False),
    ("p99_tpot_ms", "tpot p99 (ms)", False),
    ("median_itl_ms", "itl p50 (ms)", False),
    ("p99_itl_ms", "itl p99 (ms)", False),
    ("median_e2el_ms", "e2el p50 (ms)", False),
    ("p99_e2el_ms", "e2el p99 (ms)", False),
)


@dataclass
class Column:
    name: str
    summary: Mapping[str, Any]  # a Summary; read by the metric keys in the table below


def _name(label: str, settings: dict[str, Any], fallback: str) -> str:
    parts = [label or fallback] + [f"{k.split('.', 1)[-1]}={v}" for k, v in settings.items()]
    return " ".join(parts)


def columns_from(path_text: str) -> list[Column]:
    path = Path(path_text)
    if path.is_dir():
        store = ResultStore(path)
        records = [r for r in store.records() if r.ok]
        if not records:
            raise HploadError(f"compare {path}: no finished points in this directory; fix: give a results directory")
        return [Column(_name(r.label, r.settings, r.point_id), r.summary) for r in records]
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise HploadError(f"compare {path}: cannot read it ({err}); fix: give a result file or directory") from err
    if path.name.endswith(POINT_SUFFIX):
        return [Column(_name(raw.get("label", ""), raw.get("settings") or {}, path.stem), raw.get("summary") or {})]
    if "summary" not in raw:
        raise HploadError(f"compare {path}: not an hpload result (no summary); fix: give points/<id>.json")
    record = path.with_name(f"{path.stem}{POINT_SUFFIX}")
    if record.is_file():
        # A point's settings name its column better than the bare server label.
        meta = json.loads(record.read_text())
        return [Column(_name(meta.get("label", ""), meta.get("settings") or {}, path.stem), raw["summary"])]
    return [Column(raw.get("label") or path.stem, raw["summary"])]


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 100 else f"{value:.2f}" if abs(value) >= 1 else f"{value:.3f}"
    return str(value)


def delta(base: Any, value: Any, higher_better: bool) -> str:
    if not isinstance(base, int | float) or not isinstance(value, int | float) or isinstance(base, bool):
        return ""
    if base == 0:
        return "" if value == 0 else "(new)"
    change = (value - base) / abs(base) * 100
    if abs(change) < 0.05:
        return "(=)"
    better = (change > 0) == higher_better
    return f"({change:+.1f}% {'better' if better else 'worse'})"


def compare_table(columns: list[Column], *, markdown: bool = False) -> str:
    """Plain text (aligned) or Markdown. The first column is the baseline for every delta."""
    if not columns:
        raise HploadError("compare: nothing to compare; fix: give at least one result")
    header = ["metric"] + [c.name for c in columns]
    rows: list[list[str]] = []
    base = columns[0].summary
    for key, heading, higher in ROWS:
        if all(key not in c.summary for c in columns):
            continue
        row = [heading, _fmt(base.get(key))]
        for c in columns[1:]:
            value = c.summary.get(key)
            row.append(f"{_fmt(value)} {delta(base.get(key), value, higher)}".strip())
        rows.append(row)
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(line.rstrip() for line in out)
