"""Capacity records in ``hpload report`` (latency against offered rate, SLO line, capacity marked) and in
``hpload compare`` (capacities side by side with their ratio to the first)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hpload.scenarios.capacity_run import load_records


def curve(record: dict[str, Any], metric: str) -> list[tuple[float, float | None, float | None, bool]]:
    """(offered rate, p50 ms, p99 ms, passed) per full probe, by rate (the TUI draws the same points)."""
    out = []
    for p in sorted(record["probes"], key=lambda p: p["rate"]):
        if p["kind"] != "full":
            continue
        stats = p.get("stats") or {}
        out.append((p["rate"], stats.get(f"median_{metric}_ms"), stats.get(f"p99_{metric}_ms"), p["passed"]))
    return out


def plot(plt: Any, records: list[dict[str, Any]], out: Path) -> Path:
    fig, axes = plt.subplots(len(records), 2, figsize=(11, 3.6 * len(records)), squeeze=False)
    for row, record in zip(axes, records, strict=True):
        for ax, metric in zip(row, ("ttft", "tpot"), strict=True):
            pts = curve(record, metric)
            rates = [r for r, *_ in pts]
            for idx, (name, style) in enumerate((("p50", "o"), ("p99", "s"))):
                ys = [v[1 + idx] for v in pts]
                ax.plot([r for r, y in zip(rates, ys, strict=True) if y is not None],
                        [y for y in ys if y is not None], style, label=f"{name} {metric}", markersize=4)  # fmt: skip
            failed = [(r, p99) for r, _, p99, ok in pts if not ok and p99 is not None]
            if failed:
                ax.plot(*zip(*failed, strict=True), "rx", markersize=9, label="probe failed")
            limit = record["slo"].get(f"{metric}_p99_ms") or record["slo"].get(f"{metric}_ms")
            if limit:
                ax.axhline(limit, color="red", linestyle="--", linewidth=1, label=f"SLO {limit:g} ms")
            if record["capacity_rps"]:
                ax.axvline(record["capacity_rps"], color="green", linewidth=1.5,
                           label=f"capacity {record['capacity_rps']:.4g} req/s")  # fmt: skip
            ax.set_xlabel("offered rate (req/s)")
            ax.set_ylabel(f"{metric} (ms)")
            ax.set_yscale("log")
            ax.set_title(f"{record['label']}: {metric} against offered rate")
            ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "capacity.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown(records: list[dict[str, Any]]) -> list[str]:
    md = ["## Capacity under the SLO", "", "| server | capacity req/s | output tok/s | interval [lo, hi) | p99 ttft ms "
          "| p99 tpot ms | probes | probe-s | how it ended |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in records:
        lat = r["latency_at_capacity"]
        md.append(f"| {r['label']} | {r['capacity_rps']:.4g} | {r['output_tok_s'] or 0:.1f} | "
                  f"[{r['interval']['lo']}, {r['interval']['hi']}) | {_ms(lat.get('p99_ttft_ms'))} | "
                  f"{_ms(lat.get('p99_tpot_ms'))} | {len(r['probes'])} | {r['probe_seconds']:.1f} | {r['reason']} |")
    slo = records[0]["slo"] if records else {}
    md += ["", f"SLO: {', '.join(f'{k} {v:g}' for k, v in slo.items())}; the capacity is the highest offered rate "
           "whose full probe met it (docs/capacity.md).", ""]  # fmt: skip
    return md


def _ms(v: Any) -> str:
    return "-" if v is None else f"{float(v):.1f}"


def add_to_report(plt: Any, root: Path, out: Path, plots: list[Path], md: list[str]) -> None:
    """The report's capacity section and plot, when the directory holds capacity records."""
    from hpload.scenarios.capacity_tune import load_studies
    from hpload.scenarios.capacity_tune import markdown as study_markdown

    md += study_markdown(load_studies(root))
    records = load_records(root)
    if not records:
        return
    path = plot(plt, records, out)
    plots.append(path)
    md += markdown(records) + [f"![capacity](report/{path.name})", ""]


def compare_capacities(paths: list[str]) -> str | None:
    """Capacities of every results directory given, side by side, each as a ratio of the first; None when none
    of them holds capacity records."""
    rows = [r for p in paths if Path(p).is_dir() for r in load_records(Path(p))]
    if not rows:
        return None
    base = rows[0]["capacity_rps"]
    head = f"{'server':<24} {'capacity req/s':>14} {'ratio':>7} {'out tok/s':>10} {'interval':>20}  SLO"
    lines = [head, "-" * len(head)]
    for r in rows:
        ratio = f"{r['capacity_rps'] / base:.2f}x" if base else "-"
        interval = f"[{r['interval']['lo']}, {r['interval']['hi']})"
        slo = ", ".join(f"{k} {v:g}" for k, v in r["slo"].items())
        lines.append(f"{r['label'][:24]:<24} {r['capacity_rps']:>14.4g} {ratio:>7} {r['output_tok_s'] or 0:>10.1f} "
                     f"{interval:>20}  {slo}")
    return "\n".join(lines)
