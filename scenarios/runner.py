"""Run a scenario's points headless (``hpload run``) or under the TUI, saving each point the moment it ends.

The runner is UI-free: progress leaves through a ``RunListener`` (point started / finished, server starting) and
the load generator's ``Observer`` (periodic snapshots); a ``stop`` event ends the run between requests. The TUI
runs ``run_scenario`` in a worker with its own listener and observer; the console gets ``ConsoleProgress``.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from hpload.errors import HploadError, ServerError, one_line
from hpload.loadgen.snapshot import Observer
from hpload.loadgen.specs import SLO, LoadSpec, Target, WorkloadSpec
from hpload.loadgen.vocabulary import Summary, as_summary
from hpload.scenarios.points import Point, expand, settings_key
from hpload.scenarios.results import PointRecord, ResultStore
from hpload.scenarios.schema import Scenario, Threshold
from hpload.servers.kinds import KINDS, ServerSettings

if TYPE_CHECKING:
    from hpload.loadgen.result import RunResult
    from hpload.servers.base import Server


class RunListener(Protocol):
    def server_starting(self, settings: ServerSettings) -> None: ...
    def point_started(self, index: int, total: int, point: Point) -> None: ...
    def point_finished(self, index: int, total: int, record: PointRecord, skipped: bool) -> None: ...


class QuietListener:
    def server_starting(self, settings: ServerSettings) -> None:
        pass

    def point_started(self, index: int, total: int, point: Point) -> None:
        pass

    def point_finished(self, index: int, total: int, record: PointRecord, skipped: bool) -> None:
        pass


@dataclass
class RunReport:
    results_dir: Path
    records: list[PointRecord] = field(default_factory=list)  # every point of the scenario reached, in order
    measured: int = 0
    skipped: int = 0
    failed: int = 0
    stopped: bool = False
    threshold_failures: list[str] = field(default_factory=list)


def default_results_dir(scenario: Scenario) -> Path:
    return Path(scenario.results_dir or Path("results") / scenario.name)


def tokenizer_path(settings: ServerSettings) -> str | None:
    """The model directory the client measures synthetic prompts with (managed local models only)."""
    if not KINDS[settings.kind].local_model:
        return None
    model = getattr(settings, "model", None)
    if model:
        return str(model) if Path(str(model)).exists() else None
    from hpload.paths import default_model_dir

    return str(default_model_dir())


class ServerKeeper:
    """Holds at most one running server and restarts it only when different settings are asked for."""

    def __init__(self, workdir: Path | None = None, listener: RunListener | None = None) -> None:
        self._workdir = workdir
        self._listener = listener or QuietListener()
        self._server: Server | None = None
        self._key: str | None = None

    async def ensure(self, settings: ServerSettings) -> Server:
        key = settings_key(settings)
        if self._server is not None and self._key == key and self._server.alive():
            return self._server
        await self.close()
        from hpload.servers import make_server

        self._listener.server_starting(settings)
        if KINDS[settings.kind].local_model and getattr(settings, "model", None) is None:
            from hpload.model import ensure_tiny_model

            await asyncio.to_thread(ensure_tiny_model)
        if self._workdir is not None:
            self._workdir.mkdir(parents=True, exist_ok=True)
        server = make_server(settings, workdir=self._workdir)
        await server.__aenter__()  # start + wait until a real completion works; stops itself if that fails
        self._server, self._key = server, key
        return server

    async def close(self) -> None:
        server, self._server, self._key = self._server, None, None
        if server is not None:
            await server.__aexit__(None, None, None)


def target_for(server: Server, settings: ServerSettings) -> Target:
    return Target(
        base_url=server.base_url,
        model=server.model,
        api_key=server.api_key,
        label=server.label,
        metrics_url=server.metrics_url,
        tokenizer_path=tokenizer_path(settings),
    )


async def measure(
    keeper: ServerKeeper,
    server_settings: ServerSettings,
    workload: WorkloadSpec,
    load: LoadSpec,
    slo: SLO,
    *,
    observer: Observer | None = None,
    stop: asyncio.Event | None = None,
    requests_path: Path | None = None,
) -> tuple[RunResult | None, str | None]:
    """One measurement: (result, None), or (result or None, why it failed). A crashed server is an outcome, not an
    error; a server that died mid-run still returns the run's result."""
    from hpload.loadgen import run_load

    try:
        server = await keeper.ensure(server_settings)
    except ServerError as err:
        return None, one_line(str(err), 300)
    from hpload.gpu import GpuSampler

    try:
        # GPU telemetry beside the client's metrics; where there is no GPU the sampler records why and costs nothing.
        with GpuSampler() as gpu:
            result = await run_load(
                target_for(server, server_settings), workload, load, slo=slo, observer=observer, stop=stop,
                requests_path=requests_path,
            )  # fmt: skip
        result.gpu = gpu.summary()
    except ServerError as err:
        await keeper.close()
        return None, one_line(str(err), 300)
    if not server.alive():
        # The run "finished" because the server died under it: record why, and start afresh next time. The result
        # is kept: its requests cut by the crash are counted by error kind.
        cause = one_line(server.log_tail(20), 300)
        await keeper.close()
        return result, f"server {server_settings.label} died during the run: {cause}"
    return result, None


def check_thresholds(thresholds: list[Threshold], record: PointRecord) -> list[str]:
    """Broken thresholds of one point, one line each."""
    if not thresholds:
        return []
    if not record.ok:
        return [f"{record.point_id}: failed ({record.error})"]
    out = []
    for threshold in thresholds:
        value = record.summary.get(threshold.metric)
        if not isinstance(value, int | float):
            known = ", ".join(k for k, v in record.summary.items() if isinstance(v, int | float))
            raise HploadError(f"thresholds.{threshold.metric}: no such numeric metric in results; fix: use one of {known}")
        if not threshold.check(float(value)):
            out.append(f"{record.point_id}: {threshold.metric} = {value:.4g}, wanted {threshold.op} {threshold.limit:g}")
    return out


def make_record(point: Point, result: RunResult | None, error: str | None, source: str = "run") -> PointRecord:
    summary = Summary()
    warnings: list[str] = []
    if result is not None:
        # A point's record keeps the scalar keys (the errors mapping stays in the result file).
        summary = as_summary({k: v for k, v in result.summary.items() if isinstance(v, int | float | str | None)})
        warnings = [*result.warnings, *(result.health or {}).get("warnings", [])]
    return PointRecord(
        point_id=point.point_id,
        label=point.label,
        kind=point.server.kind,
        status="ok" if result is not None and error is None else "failed",
        settings=dict(point.settings),
        server=point.server.model_dump(mode="json", exclude={"api_key"}),
        summary=summary,
        error=error,
        repeat=point.repeat,
        source=source,
        warnings=warnings,
    )


async def run_scenario(
    scenario: Scenario,
    *,
    results_dir: Path | None = None,
    listener: RunListener | None = None,
    observer: Observer | None = None,
    stop: asyncio.Event | None = None,
    retry_failed: bool = True,
) -> RunReport:
    """Measure every point not already finished in ``results_dir``; thresholds are checked over all points."""
    listener = listener or QuietListener()
    store = ResultStore(results_dir or default_results_dir(scenario))
    store.prepare(scenario.model_dump(mode="json", exclude={"servers": {"__all__": {"api_key"}}}))
    report = RunReport(results_dir=store.root)
    thresholds = scenario.threshold_list()
    points = expand(scenario)
    keeper = ServerKeeper(workdir=store.root / "logs", listener=listener)
    try:
        for index, point in enumerate(points, start=1):
            if stop is not None and stop.is_set():
                report.stopped = True
                break
            done = store.get(point.point_id)
            if done is not None and (done.ok or not retry_failed):
                report.skipped += 1
                report.records.append(done)
                listener.point_finished(index, len(points), done, True)
                continue
            listener.point_started(index, len(points), point)
            requests_path = store.requests_path(point.point_id) if scenario.save_requests else None
            result, error = await measure(
                keeper, point.server, point.workload, point.load, scenario.slo, observer=observer, stop=stop,
                requests_path=requests_path,
            )  # fmt: skip
            if stop is not None and stop.is_set():
                # A point cut short is not a measurement: leave it for the rerun.
                report.stopped = True
                break
            record = store.save(make_record(point, result, error), result)
            report.records.append(record)
            report.measured += 1
            report.failed += 0 if record.ok else 1
            listener.point_finished(index, len(points), record, False)
            if not record.ok and scenario.on_failure == "stop":
                report.stopped = True
                break
    finally:
        # Shielded so Ctrl-C during the loop still stops the server before hpload exits.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(keeper.close())
    for record in report.records:
        report.threshold_failures += check_thresholds(thresholds, record)
    return report
