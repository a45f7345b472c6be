"""One run of a scenario as the TUI drives it, reporting through a :class:`~hpload.tui.feed.Feed`. No Textual here.

The work itself is ``hpload.scenarios.runner.run_scenario``, the same engine as ``hpload run``: servers start and
stop there, every finished point is saved to disk there. ``Session.run()`` blocks and owns an asyncio loop of its
own, so the TUI calls it from a thread worker: the load generator never waits for a repaint, and a repaint never
waits for the load generator's loop (only for the GIL, which Python hands over every few milliseconds). Servers
are measured one after another under the same workload (the runner's order): side by side on screen, never
competing for the machine or the client at once, so the comparison is fair.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpload.errors import HploadError, one_line
from hpload.loadgen.snapshot import Snapshot
from hpload.loadgen.specs import LoadSpec, WorkloadSpec
from hpload.scenarios.schema import Scenario
from hpload.servers.kinds import ServerSettings
from hpload.tui.feed import Feed, PointDone, ServerState

if TYPE_CHECKING:
    from hpload.scenarios.points import Point
    from hpload.scenarios.results import PointRecord
    from hpload.scenarios.tuning import Outcome

LOG_POLL_S = 1.0
LOG_LINES = 60
RUN = ""  # the label of events about the whole run rather than one server


@dataclass(frozen=True)
class RunPlan:
    """A scenario ready to run, plus notes for the setup screen."""

    scenario: Scenario
    notes: tuple[str, ...] = ()

    @property
    def title(self) -> str:
        return self.scenario.name

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(s.label for s in self.scenario.servers)

    @property
    def workload(self) -> WorkloadSpec:
        return self.scenario.workload

    @property
    def load(self) -> LoadSpec:
        return self.scenario.load


class Session:
    """Runs a plan once. ``stop()`` may be called from any thread, before, during or after ``run()``."""

    def __init__(self, plan: RunPlan, feed: Feed, *, results_root: Path | None = None) -> None:
        self.plan = plan
        self.feed = feed
        stamp = time.strftime("%Y%m%d-%H%M%S")  # wall clock: a directory name, never a latency
        root = results_root if results_root is not None else Path("results")
        # A fresh directory per start: the runner resumes finished points, and a TUI start must measure anew.
        self.results_dir = root / plan.scenario.name / f"tui-{stamp}-{id(self) % 10000:04d}"
        self._stop_requested = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._starting: str | None = None  # label of a server between "starting" and its first snapshot
        self._best: tuple[float, int] | None = None
        self._log_seen: dict[str, str] = {}
        self._point_detail: dict[str, str] = {}
        self._points = 0  # rows in the points table (tuning trials are numbered per server)
        self.error: str | None = None

    def stop(self) -> None:
        self._stop_requested.set()
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed between the check and the call
                loop.call_soon_threadsafe(stop.set)

    @property
    def stop_requested(self) -> bool:
        return self._stop_requested.is_set()

    def run(self) -> None:
        asyncio.run(self._main())

    # -- the runner's listener and observer (called on this session's loop) -----------------------------------
    # The runner announces a point, then (when its settings differ from the running server's) starts a server;
    # the first snapshot of the point says the server is up and loaded.
    def point_started(self, index: int, total: int, point: Point) -> None:
        detail = f"point {index}/{total}" + "".join(f" {k.split('.')[-1]}={v}" for k, v in point.settings.items())
        self._point_detail[point.label] = detail
        self.feed.event(ServerState(point.label, "running", detail))

    def server_starting(self, settings: ServerSettings) -> None:
        self._starting = settings.label
        self.feed.event(ServerState(settings.label, "starting", f"{settings.kind} server"))

    def point_finished(self, index: int, total: int, record: PointRecord, skipped: bool) -> None:
        self._points += 1
        violations = self._violations(record)
        feasible = record.ok and not violations
        objective = float(record.summary.get("output_throughput") or 0.0)
        best = False
        if feasible and (self._best is None or objective > self._best[0]):
            self._best, best = (objective, index), True
        self.feed.event(
            PointDone(index=index, label=record.label, values=dict(record.settings), summary=dict(record.summary),
                      feasible=feasible, best=best, note=record.error or "; ".join(violations))
        )
        if not record.ok:
            state, detail = "failed", record.error or "failed"
        elif not record.summary.get("completed"):
            # Finished, but not one request succeeded: that is a broken server or URL, whatever the runner says.
            state, detail = "failed", f"no request succeeded in point {index}/{total}"
        else:
            state, detail = "done", f"point {index}/{total}" + (f", misses: {violations[0]}" if violations else "")
        self.feed.event(ServerState(record.label, state, one_line(detail, 200)))

    def trial_finished(
        self, label: str, number: int, total: int, params: dict[str, Any], outcome: Outcome, reused: bool
    ) -> None:
        """A tuning trial ended: one more row in the points table (the tuner's listener protocol)."""
        assert self.plan.scenario.tune is not None
        objective = self.plan.scenario.tune.objective
        value = outcome.value if not outcome.failed else None
        best = False
        if outcome.feasible and value is not None and (self._best is None or value > self._best[0]):
            self._best, best = (value, self._points + 1), True
        broken = [f"{name} +{excess:.3g}" for name, excess in outcome.constraints.items() if excess > 0]
        note = outcome.error or "; ".join(broken)
        if reused:
            note = f"known point{': ' + note if note else ''}"
        self._points += 1
        self.feed.event(
            PointDone(index=self._points, label=label, values=dict(params), summary={objective: value},
                      feasible=outcome.feasible, best=best, note=note)
        )
        state = "failed" if outcome.failed else "done"
        self.feed.event(ServerState(label, state, f"trial {number}/{total}"))

    def observe(self, snap: Snapshot) -> None:
        if self._starting == snap.label:
            self._starting = None
            self.feed.event(ServerState(snap.label, "running", self._point_detail.get(snap.label, "")))
        self.feed.snapshot(snap.label, snap)

    def _violations(self, record: PointRecord) -> list[str]:
        if not record.ok:
            return []
        from hpload.loadgen.slo import violations
        from hpload.scenarios.runner import check_thresholds

        found = violations(self.plan.scenario.slo, record.summary)
        with contextlib.suppress(HploadError):
            found += check_thresholds(self.plan.scenario.threshold_list(), record)
        return found

    # -- the run ----------------------------------------------------------------------------------------------
    async def _main(self) -> None:
        from hpload.scenarios.runner import run_scenario
        from hpload.scenarios.tune_runner import tune_scenario

        self._stop = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        if self._stop_requested.is_set():
            self._stop.set()
        # A [tune] table makes the run a study (Optuna asks, the runner measures); otherwise every point runs.
        work = tune_scenario if self.plan.scenario.tune is not None else run_scenario
        job: asyncio.Task[Any] = asyncio.create_task(
            work(  # type: ignore[operator]
                self.plan.scenario,
                results_dir=self.results_dir,
                listener=self,
                observer=self.observe,
                stop=self._stop,
            )
        )
        follow = asyncio.create_task(self._follow_logs())
        stop_wait = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait({job, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
            if not job.done() and self._starting is not None:
                # Still waiting for a server to become ready (vLLM: a minute or more): abandon the start-up;
                # the server's context manager stops its process group on the way out of the cancellation.
                self.feed.event(ServerState(self._starting, "stopped", "stopped during start-up"))
                job.cancel()
            try:
                report = await job
            except asyncio.CancelledError:
                if not self._stop.is_set():
                    raise
                report = None
            except Exception as err:  # noqa: BLE001 - shown on screen; the UI outlives a broken run
                self.error = f"{type(err).__name__}: {one_line(str(err), 300)}"
                self.feed.event(ServerState(RUN, "failed", self.error))
                return
            stopped = self._stop.is_set() or bool(getattr(report, "stopped", False))
            self.feed.event(ServerState(RUN, "stopped" if stopped else "done", str(self.results_dir)))
        finally:
            for task in (follow, stop_wait):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self._publish_logs()  # the last lines, often the reason a server stopped
            self._loop = None

    async def _follow_logs(self) -> None:
        while True:
            await self._publish_logs()
            await asyncio.sleep(LOG_POLL_S)

    async def _publish_logs(self) -> None:
        from hpload.procs import tail_file

        logs = self.results_dir / "logs"
        for label in self.plan.labels:
            # Servers log to "<label>-<port>.log" in the runner's work directory; a restart makes a newer one.
            files = sorted(logs.glob(f"{label}-*.log"), key=lambda p: p.stat().st_mtime) if logs.is_dir() else []
            if files:
                text = await asyncio.to_thread(tail_file, files[-1], LOG_LINES)
                if self._log_seen.get(label) != text:
                    self._log_seen[label] = text
                    self.feed.log(label, text)
