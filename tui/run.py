"""The run screen: one column per server, live from the load run's snapshots, with keys to stop and restart.

The load run runs in a child process (:mod:`hpload.tui.child`); a thread worker here reads its pipe into a
:class:`Feed`, which wakes this screen with at most one ``FeedReady`` message in flight; the screen then takes
the latest snapshot per server and redraws once. On narrow or short terminals the keys 1-4 pick one view; from
120x36 up every view is on screen at once.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Static
from textual.worker import Worker, WorkerState

from hpload.gpu import GpuSample, GpuTelemetry, describe
from hpload.loadgen.snapshot import HistogramView, Snapshot
from hpload.tui.child import ChildRun
from hpload.tui.feed import Batch, Feed, PointDone, ServerState
from hpload.tui.logaxis import LogAxis
from hpload.tui.panels import HIST_METRICS, PointsTable, ServerPanel
from hpload.tui.session import RUN, RunPlan, Session

VIEWS = ("latency", "rates", "log", "points")
GPU_POLL_S = 2.0
STOP_WAIT_S = 60.0  # server teardown is SIGTERM + at most 10 s + SIGKILL; a load's drain is bounded too


class FeedReady(Message):
    """Something new is waiting in the feed (posted from the load run's thread)."""


class RunScreen(Screen[None]):
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (120, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (36, "-tall")]

    BINDINGS = [
        Binding("s", "stop", "Stop"),
        Binding("r", "restart", "Restart"),
        Binding("1", "view('latency')", "Latency"),
        Binding("2", "view('rates')", "Rates/health"),
        Binding("3", "view('log')", "Server log"),
        Binding("4", "view('points')", "Points", show=False),
        Binding("escape", "back", "Setup"),
    ]

    def __init__(
        self,
        plan: RunPlan,
        *,
        autostart: bool = True,
        gpu: GpuTelemetry | None = None,
        results_root: Path | None = None,
        run_in: str = "process",
    ) -> None:
        super().__init__()
        self.plan = plan
        self.autostart = autostart
        self.view = "latency"
        self.feed = Feed(lambda: self.post_message(FeedReady()))
        self.run_in = run_in  # "process" (the default, see hpload.tui.child) or "thread", for comparison
        self.session: ChildRun | Session | None = None
        self.load_worker: Worker[None] | None = None
        self.gpu = gpu if gpu is not None else GpuTelemetry()
        self.started_at: float | None = None
        self.redraws = 0  # feed drains that changed something; with Feed.published it shows the coalescing
        self.outcome: ServerState | None = None  # how the last run ended
        self.results_root = results_root

    # -- layout -------------------------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Static(id="runbar")
        yield Static("GPU: …", id="gpu")
        with Horizontal(id="panels"):
            workload = self.plan.workload
            ideal = workload.ideal_hit_fraction() if workload.source == "shared_prefix" else None
            for key, label in enumerate(self.plan.labels):
                yield ServerPanel(key, label, ideal)
        yield PointsTable(id="points")
        yield Footer()

    def on_mount(self) -> None:
        self._show_view()
        self._update_runbar()
        self._poll_gpu()
        self.set_interval(GPU_POLL_S, self._poll_gpu, name="gpu")
        self.set_interval(1.0, self._update_runbar, name="runbar")
        if self.autostart:
            self.start()

    def panels(self) -> list[ServerPanel]:
        return list(self.query(ServerPanel))

    # -- the load run ---------------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.load_worker is not None and self.load_worker.state in (WorkerState.PENDING, WorkerState.RUNNING)

    def start(self) -> None:
        if self.running:
            return
        for panel in self.panels():
            panel.reset()
        self.feed.drain()  # anything a previous session left behind belongs to it
        self.outcome = None
        if self.run_in == "thread":
            self.session = Session(self.plan, self.feed, results_root=self.results_root)
        else:
            self.session = ChildRun(self.plan, self.feed, results_root=self.results_root)
        self.started_at = time.monotonic()
        self.load_worker = self.run_worker(
            self.session.run, name="load-run", group="load-run", thread=True, exit_on_error=False
        )
        self._update_runbar()

    async def stop_and_wait(self, timeout_s: float = STOP_WAIT_S) -> bool:
        """Ask the load run to stop and wait for its thread (servers down, results drained). False on timeout."""
        if self.session is not None:
            self.session.stop()
        worker = self.load_worker
        if worker is None or not self.running:
            return True
        try:
            await asyncio.wait_for(worker.wait(), timeout_s)
        except TimeoutError:
            return False
        except Exception:  # noqa: BLE001 - WorkerFailed/Cancelled: the thread is over, which is all we wait for
            return True
        return True

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        # Textual routes every worker's state change here: the load run's and the GPU poller's.
        worker = event.worker
        if worker is self.load_worker:
            if event.state == WorkerState.ERROR and worker.error is not None:
                self.notify(f"load run failed: {worker.error}", severity="error", timeout=10)
            self._update_runbar()
        elif worker.group == "gpu" and event.state == WorkerState.SUCCESS and worker.result is not None:
            samples, unavailable = worker.result
            self.query_one("#gpu", Static).update(Text("GPU: " + "  |  ".join(describe(samples, unavailable))))

    # -- feed -> widgets ----------------------------------------------------------------------------------------
    def on_feed_ready(self, _: FeedReady) -> None:
        batch = self.feed.drain()
        if batch:
            self.apply(batch)

    def apply(self, batch: Batch) -> None:
        """Draw a batch of load-run output; also the entry point for tests and snapshots fed fixed data."""
        panels = {p.label: p for p in self.panels()}
        for event in batch.events:
            if isinstance(event, PointDone):
                if not self.has_class("has-points"):
                    self.add_class("has-points")
                    self._show_view()
                self.query_one(PointsTable).add_point(event)
            elif event.label == RUN:
                self.outcome = event
                if event.state == "failed":
                    self.notify(event.detail, title="run failed", severity="error", timeout=15)
                self._update_runbar()
            elif event.label in panels:
                panels[event.label].set_state(event.state, event.detail)
        for label, snap in batch.snapshots.items():
            if label in panels:
                panels[label].set_snapshot(snap)
        for label, text in batch.logs.items():
            if label in panels:
                panels[label].set_log(text)
        if batch.snapshots:
            self._draw_histograms()
            self._share_rate_scales()
        self.redraws += 1

    def _draw_histograms(self) -> None:
        live = [p for p in self.panels() if p.snapshot is not None]
        for metric in HIST_METRICS:
            views = tuple(v for p in live if (v := _hist(p.snapshot, metric)) is not None)
            axis = LogAxis.covering(views)  # one x axis and one y scale per metric for every column
            for panel in live:
                panel.histogram(metric).show(_hist(panel.snapshot, metric), axis, views)

    def _share_rate_scales(self) -> None:
        panels = self.panels()
        for attr in ("req_rate", "tok_rate"):
            histories = [getattr(p, attr) for p in panels]
            peak = max((max(h.values, default=0.0) for h in histories), default=0.0)
            for history in histories:
                history.scale_max = peak or None
                history.refresh()

    def on_resize(self) -> None:
        # Breakpoint classes are updated on resize; the views follow them.
        self.call_after_refresh(self._after_resize)

    def _after_resize(self) -> None:
        self._show_view()
        self._update_runbar()

    # -- small parts --------------------------------------------------------------------------------------------
    def _update_runbar(self) -> None:
        if self.running:
            state = "stopping" if self.session is not None and self.session.stop_requested else "running"
        elif self.session is None:
            state = "ready (r starts)"
        elif self.outcome is not None and self.outcome.state == "failed":
            state = "failed (r restarts)"
        elif self.session.stop_requested:
            state = "stopped (r restarts)"
        else:
            state = "finished (r restarts)"
        elapsed = f" {time.monotonic() - self.started_at:.0f}s" if self.started_at and self.running else ""
        load = self.plan.load
        if load.replay:
            loop = "replay" + (f" at {load.rate:g} req/s" if load.rate else "") + (
                f" times x{load.time_scale:g}" if load.time_scale != 1 else "")  # fmt: skip
        else:
            loop = f"c={load.concurrency}" if load.concurrency else f"{load.rate:g} req/s" if load.rate else "steps"
        bar = Text(no_wrap=True, overflow="ellipsis")
        bar.append(f"{self.plan.title}", style="bold")
        bar.append(f"  {state}{elapsed}  {loop}  {self.plan.workload.describe()}")
        bar.append("" if self.everything_fits else f"  view: {self.view}")
        self.query_one("#runbar", Static).update(bar)

    @work(thread=True, exclusive=True, group="gpu", exit_on_error=False)
    def _poll_gpu(self) -> tuple[list[GpuSample], str | None]:
        return self.gpu.sample(), self.gpu.unavailable

    # -- actions ------------------------------------------------------------------------------------------------
    def action_stop(self) -> None:
        if self.session is not None and self.running:
            self.session.stop()
            self.notify("stopping: finishing in-flight requests, then the server", timeout=3)
        self._update_runbar()

    async def action_restart(self) -> None:
        if self.running:
            self.notify("restarting: stopping the current run first", timeout=3)
            await self.stop_and_wait()
        self.query_one(PointsTable).clear()
        self.start()

    def action_view(self, view: str) -> None:
        self.view = view
        self._show_view()
        self._update_runbar()

    @property
    def everything_fits(self) -> bool:
        return self.has_class("-wide") and self.has_class("-tall")

    def _show_view(self) -> None:
        # Display is set per widget, not through a class on the screen: a screen class makes Textual re-apply
        # the stylesheet to every widget below it (~80 ms on a busy 2-core box), a per-widget display only
        # re-lays them out.
        all_in = self.everything_fits
        show = {
            "latency-view": all_in or self.view in ("latency", "points"),
            "rate-view": all_in or self.view == "rates",
            "panel-body": all_in or self.view != "log",
            "log-view": all_in or self.view == "log",
        }
        for panel in self.panels():
            for part, visible in show.items():
                panel.query_one(f".{part}").display = visible
        self.query_one("#panels").display = all_in or self.view != "points"
        self.query_one(PointsTable).display = self.view == "points" or (all_in and self.has_class("has-points"))

    async def action_back(self) -> None:
        await self.stop_and_wait()
        self.dismiss()


def _hist(snap: Snapshot | None, metric: str) -> HistogramView | None:
    return None if snap is None else snap.histograms.get(metric)
