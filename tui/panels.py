"""The run screen's building blocks: one ``ServerPanel`` per server, and the shared points table.

A panel only formats what it is given; the run screen decides the shared axes and which parts are visible.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from rich.style import Style
from rich.text import Text
from textual.app import ComposeResult
from textual.color import Color
from textual.containers import Horizontal, Vertical
from textual.widget import Widget
from textual.widgets import DataTable, Static

from hpload.loadgen.snapshot import ClientHealth, Snapshot
from hpload.tui.feed import PointDone
from hpload.tui.histogram import HistogramChart
from hpload.tui.logaxis import bar_rows, format_ms

HIST_METRICS = ("ttft", "itl", "e2el")
HISTORY_POINTS = 720  # six minutes of 0.5 s snapshots; a sparkline shows the newest that fit its width

STATE_MARKS = {  # state -> (mark, theme variable for its colour)
    "idle": ("○", "foreground-muted"),
    "starting": ("◌", "warning"),
    "ready": ("◉", "success"),
    "running": ("●", "success"),
    "done": ("✔", "success"),
    "stopped": ("■", "warning"),
    "failed": ("✖", "error"),
}


def counters_line(snap: Snapshot | None) -> str:
    if snap is None:
        return "no snapshot yet"
    return (
        f"ok {snap.requests_completed}  fail {snap.requests_failed}  in-flight {snap.in_flight}  "
        f"out-tok {snap.output_tokens}"
    )


def errors_line(errors: dict[str, int]) -> str:
    live = {kind: n for kind, n in errors.items() if n}
    if not live:
        return "errors  none"
    return "errors  " + "  ".join(f"{kind} {n}" for kind, n in sorted(live.items(), key=lambda kv: -kv[1]))


def health_line(health: ClientHealth | None) -> str:
    if health is None:
        return "client  -"
    return (
        f"client  cpu {health.cpu_percent:.0f}%  loop lag {format_ms(health.loop_lag_ms)}  "
        f"sched lag {format_ms(health.schedule_lag_ms)}"
    )


def server_timing_line(snap: Snapshot | None) -> str:
    """The server's own per-request view, where it gives one: client-minus-server TTFT and server queue, p50/p99."""
    if snap is None or "ttft_gap" not in snap.metrics:
        return ""
    gap = snap.metrics["ttft_gap"]
    line = f"\nserver  ttft gap p50 {format_ms(gap.p50_ms)} p99 {format_ms(gap.p99_ms)}"
    queue = snap.metrics.get("server_queue")
    if queue is not None:
        line += f"  queue p50 {format_ms(queue.p50_ms)} p99 {format_ms(queue.p99_ms)}"
    return line


def cache_line(snap: Snapshot | None, ideal: float | None) -> str:
    """The server's prefix-cache hits as its replies report them, beside what the workload implies where it does."""
    if snap is None or snap.cache_hit_fraction is None:
        return ""
    line = f"\ncache   hits {snap.cache_hit_fraction:.1%} of prompt tokens (server usage)"
    return line + (f", ideal {ideal:.1%}" if ideal is not None else "")


def rate_label(name: str, history: deque[float]) -> str:
    if not history:
        return f"{name}  -"
    return f"{name} {_num(history[-1])} peak {_num(max(history))}"


def _num(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


class RateHistory(Widget):
    """A rate over time, one bar per snapshot, newest on the right; bars start at zero so a dip reads as a dip
    (Textual's Sparkline scales between the minimum and the maximum, which turns 2% jitter into full-height
    swings)."""

    DEFAULT_CSS = """
    RateHistory { color: $primary; }
    """

    def __init__(self, *, classes: str | None = None) -> None:
        super().__init__(classes=classes)
        self.values: deque[float] = deque(maxlen=HISTORY_POINTS)
        self.scale_max: float | None = None  # shared by side-by-side columns; None = this history's own peak

    def push(self, value: float) -> None:
        self.values.append(value)
        self.refresh()

    def clear(self) -> None:
        self.values.clear()
        self.refresh()

    def render(self) -> Text:
        width, height = self.content_size.width, self.content_size.height
        shown = list(self.values)[-width:] if width > 0 else []
        rows = bar_rows(shown, height, self.scale_max or max(shown, default=0.0))
        return Text("\n", no_wrap=True, overflow="crop").join(Text(row.ljust(width)) for row in rows)


class LogTail(Widget):
    """The newest lines of a server log that fit, bottom-aligned like ``tail -f``; plain text, no markup."""

    DEFAULT_CSS = """
    LogTail { color: $text-muted; }
    """

    def __init__(self, *, classes: str | None = None) -> None:
        super().__init__(classes=classes)
        self.lines: list[str] = []

    def show(self, text: str) -> None:
        self.lines = text.splitlines()
        self.refresh()

    def render(self) -> Text:
        width, height = self.content_size.width, self.content_size.height
        shown = self.lines[-height:] if height > 0 else []
        # Cut here rather than trusting no_wrap: a wrapped line would push the newest lines off the bottom.
        cut = []
        for line in shown:
            text = Text(line.expandtabs(4))
            text.truncate(width, overflow="ellipsis")
            cut.append(text)
        return Text("\n").join(cut)


class ServerPanel(Vertical):
    """Everything about one server: state, counters, latency histograms, rates, errors, client health, log."""

    req_rate: RateHistory
    tok_rate: RateHistory

    def __init__(self, key: int, label: str, ideal_hit_fraction: float | None = None) -> None:
        super().__init__(id=f"server-{key}", classes="server-panel")
        self.key = key
        self.label = label
        self.ideal_hit_fraction = ideal_hit_fraction  # a shared-prefix workload's, for the cache line
        self.state = "idle"
        self.detail = ""
        self.snapshot: Snapshot | None = None

    def compose(self) -> ComposeResult:
        yield Static(classes="panel-head")
        yield Static(classes="client-warning")
        with Horizontal(classes="panel-body"):
            with Vertical(classes="latency-view"):
                for metric in HIST_METRICS:
                    yield HistogramChart(metric, classes=f"hist-{metric}")
            with Vertical(classes="rate-view"):
                yield Static(classes="req-label rate-label")
                yield RateHistory(classes="req-history")
                yield Static(classes="tok-label rate-label")
                yield RateHistory(classes="tok-history")
                yield Static(classes="errors")
                yield Static(classes="health")
        yield LogTail(classes="log-view")

    def on_mount(self) -> None:
        self.req_rate = self.query_one(".req-history", RateHistory)
        self.tok_rate = self.query_one(".tok-history", RateHistory)
        self._redraw_text()

    def histogram(self, metric: str) -> HistogramChart:
        return self.query_one(f".hist-{metric}", HistogramChart)

    def reset(self) -> None:
        self.state, self.detail, self.snapshot = "idle", "", None
        self.req_rate.clear()
        self.tok_rate.clear()
        for metric in HIST_METRICS:
            self.histogram(metric).show(None, None)
        self.query_one(".log-view", LogTail).show("")
        self._redraw_text()

    def set_state(self, state: str, detail: str = "") -> None:
        self.state, self.detail = state, detail
        self._redraw_text()

    def set_snapshot(self, snap: Snapshot) -> None:
        self.snapshot = snap
        if not snap.done:  # the final snapshot's interval is a sliver of the drain: its rate is noise
            self.req_rate.push(snap.request_rate)
            self.tok_rate.push(snap.output_token_rate)
        self._redraw_text()

    def set_log(self, text: str) -> None:
        self.query_one(".log-view", LogTail).show(text)

    def _redraw_text(self) -> None:
        if not self.is_mounted:
            return
        snap = self.snapshot
        mark, variable = STATE_MARKS.get(self.state, ("?", "foreground"))
        head = Text(no_wrap=True, overflow="ellipsis")
        color = self.app.theme_variables.get(variable)
        head.append(mark, style=Style(color=Color.parse(color).rich_color) if color else "")
        head.append(f" {self.label}", style="bold")
        head.append(f" {self.state}")
        if snap is not None:
            head.append(f"  {snap.phase if self.state == 'running' else ''} {snap.elapsed_s:.1f}s")
        if self.detail and self.state in ("failed", "done", "stopped", "starting", "ready"):
            head.append(f"  {self.detail}", style="italic")
        head.append("\n" + counters_line(snap))
        self.query_one(".panel-head", Static).update(head)

        health = snap.health if snap else None
        warning = self.query_one(".client-warning", Static)
        self.set_class(bool(health and health.bottleneck), "-bottleneck")
        if health is not None and health.bottleneck:
            reason = health.warning or "the load generator is saturated"
            # A starved client is not the bottleneck: the host is (hpload.loadgen.starvation).
            title = "HOST STARVES THE CLIENT" if "starving the client" in reason else "CLIENT IS THE BOTTLENECK"
            warning.update(f"⚠ {title}: {reason}")

        self.query_one(".req-label", Static).update(rate_label("requests/s", self.req_rate.values))
        self.query_one(".tok-label", Static).update(rate_label("output tok/s", self.tok_rate.values))
        self.query_one(".errors", Static).update(errors_line(snap.errors if snap else {}))
        self.query_one(".health", Static).update(
            health_line(health) + server_timing_line(snap) + cache_line(snap, self.ideal_hit_fraction)
        )


class PointsTable(DataTable[Any]):
    """Finished points of a sweep or tuning study; the best feasible one carries a ★."""

    COLUMNS = ("best", "#", "server", "settings", "req/s", "out tok/s", "goodput", "ttft p99", "tpot p99", "SLO")

    def on_mount(self) -> None:
        self.cursor_type = "row"
        for name in self.COLUMNS:
            self.add_column(name, key=name)

    def add_point(self, point: PointDone) -> None:
        s = point.summary
        settings = " ".join(f"{k.split('.')[-1]}={v}" for k, v in point.values.items())

        def num(key: str, fmt: str) -> str:
            value = s.get(key)
            return fmt.format(value) if isinstance(value, int | float) else "-"

        row = (
            "",
            f"{point.index}",
            point.label,
            settings or "-",
            num("request_throughput", "{:.2f}"),
            num("output_throughput", "{:.1f}"),
            num("request_goodput", "{:.2f}"),
            num("p99_ttft_ms", "{:.1f}ms"),
            num("p99_tpot_ms", "{:.1f}ms"),
            "ok" if point.feasible else f"miss {point.note}".strip(),
        )
        self.add_row(*row, key=str(point.index))
        if point.best:
            self.mark_best(point.index)

    def mark_best(self, index: int) -> None:
        for row_key in list(self.rows):
            self.update_cell(row_key, "best", "★" if row_key.value == str(index) else "")
