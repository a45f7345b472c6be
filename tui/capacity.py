"""``hpload capacity --tui``: the probes and the latency curve of a capacity search as they come.

One screen: a table of probes (newest last) and, per server, p99 TTFT against offered rate drawn in text with the
SLO line and the capacity once found; a status line with the live probe's snapshot. The search runs in this
process's event loop (``run_capacity``), like ``hpload capacity``; q stops it between requests (finished probes stay
on disk and a rerun continues).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, ClassVar

from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Footer, Header, Static

from hpload.loadgen.snapshot import Snapshot

_W, _H = 60, 12


def curve_text(points: list[tuple[float, float, bool]], limit: float | None, capacity: float | None) -> str:
    """p99 against rate in text: o = pass, x = fail, - = the SLO line, | = the capacity."""
    if not points:
        return "(no full probe yet)"
    rates = [r for r, _, _ in points] + ([capacity] if capacity else [])
    ys = [y for _, y, _ in points] + ([limit] if limit else [])
    r0, r1 = min(rates), max(rates)
    y1 = max(ys) * 1.1 or 1.0
    grid = [[" "] * _W for _ in range(_H)]

    def col(r: float) -> int:
        return 0 if r1 == r0 else round((r - r0) / (r1 - r0) * (_W - 1))

    def row(y: float) -> int:
        return _H - 1 - min(_H - 1, round(y / y1 * (_H - 1)))

    if limit:
        for c in range(_W):
            grid[row(limit)][c] = "-"
    if capacity:
        for r in range(_H):
            grid[r][col(capacity)] = "|"
    for rate, y, ok in points:
        grid[row(y)][col(rate)] = "o" if ok else "x"
    lines = ["".join(line) for line in grid]
    return "\n".join(lines + [f"{r0:<10.4g}{'offered rate (req/s)':^{_W - 20}}{r1:>10.4g}", f"top: {y1:.0f} ms"])


class CapacityApp(App[int]):
    TITLE = "hpload capacity"
    BINDINGS: ClassVar[list[BindingType]] = [Binding("q", "stop", "Stop (finished probes stay on disk)")]

    def __init__(self, scenario: Any, results_dir: Path, slo_flags: list[str]) -> None:
        super().__init__()
        self.scenario, self.results_dir, self.slo_flags = scenario, results_dir, slo_flags
        self.sub_title = scenario.workload.describe()  # what every probe sends, in the header
        self.stop_event = asyncio.Event()
        self.points: dict[str, list[tuple[float, float, bool]]] = {}
        self.capacities: dict[str, float] = {}
        self.records: list[dict[str, Any]] = []
        self.error: str | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("starting...", id="status")
        yield Static("", id="curve")
        yield DataTable(id="probes")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns("server", "kind", "rate req/s", "verdict", "p50 ttft", "p99 ttft", "p99 tpot", "s", "why")
        self.run_worker(self._search(), exclusive=True)

    async def _search(self) -> None:
        from hpload.errors import HploadError
        from hpload.scenarios.cli_capacity import run_capacity

        try:
            self.records = await run_capacity(self.scenario, self.results_dir, self.slo_flags, quiet=True,
                                              on_probe=self.on_probe, observer=self.on_snapshot,
                                              stop=self.stop_event)  # fmt: skip
        except HploadError as err:  # SearchStopped (q) included
            self.error = str(err)
        for record in self.records:
            self.capacities[record["label"]] = record["capacity_rps"]
        self._draw()
        done = "; ".join(f"{r['label']}: {r['capacity_rps']:.4g} req/s ({r['reason']})" for r in self.records)
        self.query_one("#status", Static).update(self.error or f"done: {done}  (q quits)")

    def on_probe(self, label: str, probe: Any) -> None:
        s = probe.stats
        self.query_one(DataTable).add_row(
            label, probe.kind, f"{probe.rate:.4g}", "pass" if probe.passed else "FAIL", _ms(s.get("median_ttft_ms")),
            _ms(s.get("p99_ttft_ms")), _ms(s.get("p99_tpot_ms")), f"{probe.seconds:.1f}",
            (probe.violations[0] if probe.violations else "")[:60],
        )  # fmt: skip
        p99 = s.get("p99_ttft_ms")
        if probe.kind == "full" and isinstance(p99, int | float):
            self.points.setdefault(label, []).append((probe.rate, float(p99), probe.passed))
        self._draw()

    def on_snapshot(self, snap: Snapshot) -> None:
        ttft = snap.metrics.get("ttft")
        p99 = f"{ttft.p99_ms:.0f} ms" if ttft else "-"
        self.query_one("#status", Static).update(
            f"{snap.label}: {snap.phase} {snap.elapsed_s:5.1f} s  sent {snap.requests_started}  done "
            f"{snap.requests_completed}  in flight {snap.in_flight}  p99 ttft {p99}"
            + (f"  cache hits {snap.cache_hit_fraction:.1%}" if snap.cache_hit_fraction is not None else "")
        )

    def _draw(self) -> None:
        limit = self.scenario.slo.ttft_p99_ms or self.scenario.slo.ttft_ms
        parts = [f"{label}: p99 TTFT (ms) against offered rate\n" + curve_text(points, limit,
                 self.capacities.get(label)) for label, points in self.points.items()]  # fmt: skip
        self.query_one("#curve", Static).update("\n\n".join(parts) or "(no full probe yet)")

    def action_stop(self) -> None:
        if self.stop_event.is_set() or self.records or self.error:
            self.exit(0)
        self.stop_event.set()


def _ms(v: Any) -> str:
    return "-" if v is None else f"{float(v):.1f}"


def run_tui(scenario: Any, results_dir: Path, slo_flags: list[str]) -> list[dict[str, Any]]:
    app = CapacityApp(scenario, results_dir, slo_flags)
    app.run()
    return app.records
