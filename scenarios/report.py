"""``hpload report``: a Markdown page and PNG plots from a results directory.

Plots (matplotlib's Agg backend, imported only here):
- landscape-<label>.png: output throughput over the two settings with the most values (a heatmap; failed points
  crossed out), or a line over one setting;
- latency-cdf.png: the CDF of ttft, tpot, itl and e2el per server, read from the saved HdrHistograms, at each
  server's highest-throughput point;
- pareto.png: output throughput against p99 latency for every point, each server's Pareto front drawn as a step.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean
from typing import Any

from hpload.errors import HploadError
from hpload.scenarios.compare import Column, compare_table
from hpload.scenarios.results import PointRecord, ResultStore, open_results

CDF_METRICS = ("ttft", "tpot", "itl", "e2el")


@dataclass
class ReportFiles:
    markdown: Path
    plots: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _fmt_setting(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _sort_key(value: Any) -> tuple[int, Any]:
    return (0, value) if isinstance(value, int | float) else (1, str(value))


def landscape_axes(records: list[PointRecord]) -> list[str]:
    """Settings that vary across these points, most distinct values first (at most two)."""
    values: dict[str, set[str]] = defaultdict(set)
    for r in records:
        for key, value in r.settings.items():
            values[key].add(repr(value))
    varying = [k for k, v in values.items() if len(v) > 1]
    varying.sort(key=lambda k: -len(values[k]))
    # A zipped sweep moves several settings together (concurrency with batch size and request count): those are
    # one axis, and a heatmap of them would only fill its diagonal.
    kept: list[str] = []
    for key in varying:
        if not any(_determined_by(records, axis, key) for axis in kept):
            kept.append(key)
    return kept[:2]


def _determined_by(records: list[PointRecord], axis: str, key: str) -> bool:
    """True when every value of ``axis`` goes with a single value of ``key`` across these points."""
    seen: dict[str, str] = {}
    for r in records:
        a, k = repr(r.settings.get(axis)), repr(r.settings.get(key))
        if seen.setdefault(a, k) != k:
            return False
    return True


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(latency, throughput) pairs no other pair beats on both (lower latency and higher throughput)."""
    front: list[tuple[float, float]] = []
    best = float("-inf")
    for latency, throughput in sorted(points, key=lambda p: (p[0], -p[1])):
        if throughput > best:
            front.append((latency, throughput))
            best = throughput
    return front


def cdf_points(hist: Any) -> tuple[list[float], list[float]]:
    """(latency ms, cumulative fraction) at every recorded HdrHistogram value."""
    hist.flush()
    hdr = hist.hdr
    total = hdr.get_total_count()
    xs: list[float] = []
    ys: list[float] = []
    if not total:
        return xs, ys
    for item in hdr.get_recorded_iterator():
        xs.append(item.value_iterated_to / 1000.0)
        ys.append(item.total_count_to_this_value / total)
    return xs, ys


def _plot_landscape(plt: Any, label: str, records: list[PointRecord], axes: list[str], out: Path) -> Path:
    cells: dict[tuple[Any, ...], list[float | None]] = defaultdict(list)
    for r in records:
        key = tuple(r.settings.get(a) for a in axes)
        cells[key].append(_num(r.summary.get("output_throughput")) if r.ok else None)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if len(axes) == 1:
        xs = sorted({k[0] for k in cells}, key=_sort_key)
        ys = [mean([v for v in cells[(x,)] if v is not None] or [float("nan")]) for x in xs]
        ax.plot([_fmt_setting(x) for x in xs], ys, marker="o")
        ax.set_xlabel(axes[0])
        ax.set_ylabel("output tokens/s")
    else:
        import numpy as np

        xs = sorted({k[0] for k in cells}, key=_sort_key)
        ys = sorted({k[1] for k in cells}, key=_sort_key)
        grid = np.full((len(ys), len(xs)), np.nan)
        failed: list[tuple[int, int]] = []
        for (x, y), values in cells.items():
            ok = [v for v in values if v is not None]
            if ok:
                grid[ys.index(y), xs.index(x)] = mean(ok)
            else:
                failed.append((xs.index(x), ys.index(y)))
        image = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis")
        fig.colorbar(image, ax=ax, label="output tokens/s")
        ax.set_xticks(range(len(xs)), [_fmt_setting(x) for x in xs])
        ax.set_yticks(range(len(ys)), [_fmt_setting(y) for y in ys])
        ax.set_xlabel(axes[0])
        ax.set_ylabel(axes[1])
        vmax = np.nanmax(grid) if np.isfinite(grid).any() else 0.0
        for yi in range(len(ys)):
            for xi in range(len(xs)):
                if np.isfinite(grid[yi, xi]):
                    ax.text(xi, yi, f"{grid[yi, xi]:.0f}", ha="center", va="center", fontsize=7,
                            color="black" if grid[yi, xi] > 0.6 * vmax else "white")
        for xi, yi in failed:
            ax.text(xi, yi, "x", ha="center", va="center", color="red", fontsize=12)
    ax.set_title(f"{label}: output throughput")
    fig.tight_layout()
    path = out / f"landscape-{label}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_cdfs(plt: Any, chosen: dict[str, tuple[PointRecord, Any]], out: Path) -> Path:
    fig, axs = plt.subplots(2, 2, figsize=(9, 6.5))
    for ax, metric in zip(axs.flat, CDF_METRICS, strict=True):
        drew = False
        for label, (_record, result) in chosen.items():
            hist = result.histograms.get(metric)
            if hist is None:
                continue
            xs, ys = cdf_points(hist)
            if xs:
                ax.step(xs, ys, where="post", label=label)
                drew = True
        ax.set_title(metric)
        ax.set_xlabel("ms")
        ax.set_ylabel("fraction of samples")
        if drew:
            from matplotlib.ticker import NullFormatter

            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels on a narrow log range overprint each other
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle("latency CDFs (each server at its highest-throughput point)")
    fig.tight_layout()
    path = out / "latency-cdf.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_pareto(plt: Any, by_label: dict[str, list[PointRecord]], latency_key: str, out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, records in by_label.items():
        pts = [
            (lat, thr)
            for r in records
            if r.ok
            and (lat := _num(r.summary.get(latency_key))) is not None
            and (thr := _num(r.summary.get("output_throughput"))) is not None
        ]
        if not pts:
            continue
        line = ax.scatter([p[0] for p in pts], [p[1] for p in pts], label=label, alpha=0.6)
        front = pareto_front(pts)
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color=line.get_facecolor()[0])
    ax.set_xlabel(f"{latency_key} (lower is better)")
    ax.set_ylabel("output tokens/s (higher is better)")
    ax.set_title("throughput vs p99 latency, Pareto front per server")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = out / "pareto.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def points_table(records: list[PointRecord]) -> str:
    lines = [
        "| server | settings | status | out tok/s | req/s | goodput | p99 ttft ms | p99 tpot ms | p99 e2el ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        s = r.summary
        settings = ", ".join(f"{k}={_fmt_setting(v)}" for k, v in r.settings.items()) or "-"
        if r.repeat:
            settings += f" (repeat {r.repeat})"

        def cell(key: str, digits: int = 1, s: Mapping[str, Any] = s) -> str:
            value = _num(s.get(key))
            return "-" if value is None else f"{value:.{digits}f}"

        status = "ok" if r.ok else f"failed: {(r.error or '')[:80]}"
        lines.append(
            f"| {r.label} | {settings} | {status} | {cell('output_throughput')} | {cell('request_throughput', 2)} | "
            f"{cell('request_goodput', 2)} | {cell('p99_ttft_ms')} | {cell('p99_tpot_ms', 2)} | {cell('p99_e2el_ms')} |"
        )
    return "\n".join(lines)


def write_report(results_dir: str | Path, *, latency_key: str = "p99_ttft_ms") -> ReportFiles:
    store: ResultStore = open_results(results_dir)
    records = store.records()
    if not records:
        raise HploadError(f"report {results_dir}: no finished points yet; fix: run 'hpload run' first")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = store.root / "report"
    out.mkdir(exist_ok=True)
    files = ReportFiles(markdown=store.root / "report.md")
    by_label: dict[str, list[PointRecord]] = defaultdict(list)
    for r in records:
        by_label[r.label].append(r)
    scenario = store.scenario_dump()

    for label, group in by_label.items():
        axes = landscape_axes(group)
        if axes:
            files.plots.append(_plot_landscape(plt, label, group, axes, out))
        else:
            files.notes.append(f"{label}: no setting varies, so no landscape plot (sweep or tune to get one)")
    chosen: dict[str, tuple[PointRecord, Any]] = {}
    for label, group in by_label.items():
        ok = [r for r in group if r.ok and r.result_file]
        if ok:
            best = max(ok, key=lambda r: _num(r.summary.get("output_throughput")) or 0.0)
            chosen[label] = (best, store.load_result(best))
    if chosen:
        files.plots.append(_plot_cdfs(plt, chosen, out))
        files.plots.append(_plot_pareto(plt, by_label, latency_key, out))

    md = [f"# hpload report: {scenario.get('name', store.root.name)}", ""]
    if scenario.get("description"):
        md += [str(scenario["description"]), ""]
    ok_count = sum(r.ok for r in records)
    md += [f"{len(records)} points ({ok_count} ok, {len(records) - ok_count} failed), from `{store.root}`.", ""]
    if chosen:
        md += ["## Best point per server (highest output throughput)", ""]
        md += [compare_table([Column(f"{label}", rec.summary) for label, (rec, _) in chosen.items()], markdown=True)]
        md += ["", "Deltas are against the first column.", ""]
    md += ["## Plots", ""]
    for path in files.plots:
        md += [f"![{path.stem}](report/{path.name})", ""]
    for note in files.notes:
        md += [f"- {note}"]
    md += ["", "## All points", "", points_table(records), ""]
    md += [
        "Metrics follow vLLM `bench serve`: ttft to the first token-bearing chunk, itl between token chunks, "
        "tpot = (e2el - ttft) / (output tokens - 1), e2el to the last token chunk.",
        "",
    ]
    files.markdown.write_text("\n".join(md))
    return files
