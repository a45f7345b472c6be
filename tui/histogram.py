"""``HistogramChart``: one metric's latency distribution as block-character bars on a log axis.

Layout, top to bottom: a title line with the percentiles, the bars, a marker row with ▲ under p50/p90/p99, and
the tick labels. The x axis (``LogAxis``) and the y scale (share of samples in the fullest column) are handed in
from outside, so every column of a side-by-side view draws the same metric against the same axes.
"""

from __future__ import annotations

from rich.style import Style
from rich.text import Text
from textual.widget import Widget

from hpload.loadgen.snapshot import HistogramView
from hpload.tui.logaxis import LogAxis, bar_rows, format_ms

PERCENTILES = (("p50", "p50_ms"), ("p90", "p90_ms"), ("p99", "p99_ms"))


def column_shares(view: HistogramView, axis: LogAxis, width: int) -> list[float]:
    """Per column, the share of this view's samples (0..1): comparable between servers with different counts."""
    total = sum(view.counts)
    if total <= 0:
        return [0.0] * width
    return [c / total for c in axis.rebin(view, width)]


class HistogramChart(Widget):
    DEFAULT_CSS = """
    HistogramChart {
        height: 1fr;
        min-height: 4;
    }
    HistogramChart > .latency-histogram--title { text-style: bold; }
    HistogramChart > .latency-histogram--bar { color: $primary; }
    HistogramChart > .latency-histogram--axis { color: $foreground-muted; }
    HistogramChart > .latency-histogram--p50 { color: $success; text-style: bold; }
    HistogramChart > .latency-histogram--p90 { color: $warning; text-style: bold; }
    HistogramChart > .latency-histogram--p99 { color: $error; text-style: bold; }
    """

    COMPONENT_CLASSES = {
        "latency-histogram--title",
        "latency-histogram--bar",
        "latency-histogram--axis",
        "latency-histogram--p50",
        "latency-histogram--p90",
        "latency-histogram--p99",
    }

    def __init__(self, metric: str, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.metric = metric
        self.view: HistogramView | None = None
        self.axis: LogAxis | None = None
        # Every view drawn against the same axes (side-by-side columns): the fullest column of any of them fills
        # the height. Kept as views, not as a number, because a column's share depends on this widget's width,
        # which is only certain at render time.
        self.peers: tuple[HistogramView, ...] = ()
        self._styles: dict[str, Style] = {}

    def show(
        self, view: HistogramView | None, axis: LogAxis | None, peers: tuple[HistogramView, ...] = ()
    ) -> None:
        self.view, self.axis, self.peers = view, axis, peers
        self.refresh()

    def scale_share(self, width: int) -> float:
        """The column share that fills the full height at ``width`` columns."""
        if self.axis is None:
            return 0.0
        views = self.peers or ((self.view,) if self.view is not None else ())
        return max((max(column_shares(v, self.axis, width), default=0.0) for v in views), default=0.0)

    def _style(self, part: str) -> Style:
        return self._styles[part]

    def render(self) -> Text:
        width, height = self.content_size.width, self.content_size.height
        if width <= 0 or height <= 0:
            return Text()
        # Looked up once per frame: each lookup matches CSS, and a frame draws hundreds of styled cells.
        self._styles = {
            part: self.get_component_rich_style(f"latency-histogram--{part}")
            for part in ("title", "bar", "axis", "p50", "p90", "p99")
        }
        lines = [self._title(width)]
        view, axis = self.view, self.axis
        if view is None or axis is None or sum(view.counts) == 0:
            lines += [Text("waiting for samples…", style=self._style("axis"))]
            return Text("\n", no_wrap=True, overflow="crop").join(lines)
        bar_height = max(height - 3, 1)
        shares = column_shares(view, axis, width)
        for row in bar_rows(shares, bar_height, self.scale_share(width) or max(shares)):
            lines.append(Text(row, style=self._style("bar"), no_wrap=True))
        if height >= 4:
            lines.append(self._marker_row(view, axis, width))
        if height >= 3:
            lines.append(self._tick_row(axis, width))
        return Text("\n", no_wrap=True, overflow="crop").join(lines[:height])

    def _title(self, width: int) -> Text:
        title = Text(self.metric, style=self._style("title"), no_wrap=True, overflow="ellipsis")
        view = self.view
        if view is None or sum(view.counts) == 0:
            return title
        count = f"n={sum(view.counts)}"
        # Widest form that fits: "▲p50 12.3ms", then the bare values; the count goes first when space is short.
        for long_form in (True, False):
            legend = Text(no_wrap=True)
            for name, attr in PERCENTILES:
                value = format_ms(getattr(view, attr))
                legend.append(" ▲" if long_form else " ", style=self._style(name))
                legend.append(f"{name} {value}" if long_form else value, style=self._style(name))
            for extra in (f"  {count}", ""):
                if len(title) + len(legend) + len(extra) <= width:
                    line = title + legend
                    line.append(extra, style=self._style("axis"))
                    return line
        return title

    def _marker_row(self, view: HistogramView, axis: LogAxis, width: int) -> Text:
        marks: dict[int, str] = {}
        for name, attr in PERCENTILES:  # p99 last, so it wins when percentiles share a column
            marks[axis.column(getattr(view, attr), width)] = name
        row = Text("".join("▲" if col in marks else "─" for col in range(width)), style=self._style("axis"))
        for col, name in marks.items():
            row.stylize(self._style(name), col, col + 1)
        return row

    def _tick_row(self, axis: LogAxis, width: int) -> Text:
        chars = [" "] * width
        for start, label in axis.ticks(width):
            chars[start : start + len(label)] = label
        return Text("".join(chars), style=self._style("axis"), no_wrap=True)
