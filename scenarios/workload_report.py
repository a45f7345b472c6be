"""The report's workload section: realised length distributions (a plot), prefix-cache hit rates, requested vs
achieved rate with schedule delay, and per-turn TTFT of sessions, from each best point's ``workload_stats``."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _stats(result: Any) -> dict[str, Any]:
    return dict((getattr(result, "config", None) or {}).get("workload_stats") or {})


def plot_lengths(plt: Any, chosen: dict[str, tuple[Any, Any]], out: Path) -> Path | None:
    """Histograms of the prompt and output lengths each server's best point really used; None when no point has
    per-request lengths."""
    series: list[tuple[str, str, dict[str, Any]]] = []
    for label, (_, res) in chosen.items():
        for key in ("input_len", "output_len"):
            s = _stats(res).get(key)
            if s and s.get("counts"):
                series.append((label, key, s))
    if not series:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for label, key, s in series:
        ax = axes[0 if key == "input_len" else 1]
        edges, counts = s["edges"], s["counts"]
        ax.stairs(counts, edges, label=f"{label} (mean {s['mean']:.0f})")
    for ax, title in zip(axes, ("prompt tokens", "output tokens"), strict=True):
        ax.set_xlabel(title)
        ax.set_ylabel("requests")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "lengths.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def workload_lines(chosen: dict[str, tuple[Any, Any]]) -> list[str]:
    lines: list[str] = []
    for label, (_, res) in chosen.items():
        s = _stats(res)
        parts = []
        sends = s.get("sends") or {}
        if sends.get("requested_rate"):
            d = sends.get("schedule_delay_ms", {})
            parts.append(f"rate requested {sends['requested_rate']:.2f}/s, achieved {sends.get('achieved_rate') or 0:.2f}/s,"
                         f" schedule delay p50 {d.get('p50', 0):.2f} ms p99 {d.get('p99', 0):.2f} ms")  # fmt: skip
        for key, name in (("prefix_cache", "usage cached_tokens"), ("server_prefix_cache", "server /metrics")):
            hit = (s.get(key) or {}).get("hit_fraction")
            if hit is not None:
                parts.append(f"prefix-cache hit {hit:.1%} ({name})")
        if s.get("skipped") or s.get("clipped"):
            parts.append(f"trace rows skipped {s.get('skipped')}, clipped {s.get('clipped', 0)}")
        turns = s.get("turns") or {}
        if turns:
            ttft = ", ".join(f"{k}: {v['median_ttft_ms']:.1f}" for k, v in turns.items() if v.get("median_ttft_ms"))
            parts.append(f"median TTFT by turn (ms) {ttft}")
        if parts:
            lines.append(f"- {label}: " + "; ".join(parts))
    return (["## Workload", "", *lines, ""]) if lines else []
