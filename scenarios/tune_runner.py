"""``hpload tune``'s loop: ask Optuna for settings, (re)start the server only if they changed, measure, tell.

Every measured trial is also a point in the results directory (``source = "tune"``), written the moment it ends,
so ``hpload report`` draws the tuned landscape and a killed study loses nothing: on resume a trial whose point is
already on disk is told from the file instead of measured again. The study lives in SQLite inside the results
directory unless ``tune.storage`` names another Optuna storage (PostgreSQL lets several machines, each with its own
servers, work one study).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from hpload.loadgen.slo import slo_constraints
from hpload.loadgen.snapshot import Observer
from hpload.loadgen.specs import SLO
from hpload.scenarios.points import Point, apply_settings
from hpload.scenarios.progress import PointProgress
from hpload.scenarios.results import PointRecord, ResultStore
from hpload.scenarios.runner import QuietListener, RunListener, ServerKeeper, default_results_dir, make_record, measure
from hpload.scenarios.schema import Scenario, TuneSpec
from hpload.scenarios.space import ParamSpec, Scalar
from hpload.scenarios.tune_heartbeat import beating, fail_stale, settle
from hpload.scenarios.tuning import REPEATS_BEFORE_EXPLORING, Outcome, Proposal, Tuner
from hpload.servers.kinds import ServerSettings

SHARED_WAIT_S = 900.0

def outcome_of(record: PointRecord, objective: str, slo: SLO) -> Outcome:
    if not record.ok:
        return Outcome(value=None, error=record.error, result_path=record.result_file)
    value = record.summary.get(objective)
    if not isinstance(value, int | float) or math.isnan(float(value)):
        return Outcome(value=None, error=f"no {objective} in the result", result_path=record.result_file)
    if int(record.summary.get("completed", 0) or 0) == 0:
        return Outcome(value=None, error="no request completed", result_path=record.result_file)
    return Outcome(value=float(value), constraints=slo_constraints(slo, record.summary), result_path=record.result_file)


def default_point(tune: TuneSpec, space: dict[str, ParamSpec], base: ServerSettings, scenario: Scenario) -> dict[str, Scalar]:
    """The engine's defaults for the tuned settings: ``tune.defaults``, else the scenario's own value when it lies in
    the space (a None there means 'the engine decides', which the study cannot name, so it is left to the sampler)."""
    tables: dict[str, Any] = {"server": base, "load": scenario.load, "workload": scenario.workload}
    point: dict[str, Scalar] = {}
    for key, spec in space.items():
        if key in tune.defaults:
            point[key] = tune.defaults[key]
            continue
        table, _, name = key.partition(".")
        value = getattr(tables[table], name, None)
        if value is None:
            continue
        if spec.values is not None and value not in spec.values:
            continue
        if spec.choices is not None and value not in spec.choices:
            continue
        if spec.low is not None and spec.high is not None and not (spec.low <= value <= spec.high):
            continue
        point[key] = value
    return point


@dataclass
class StudyReport:
    label: str
    study_name: str
    storage: str
    measured: int = 0
    reused: int = 0
    best: tuple[dict[str, Scalar], float] | None = None
    default_value: float | None = None
    trials: list[tuple[dict[str, Scalar], Outcome]] = field(default_factory=list)

    @property
    def gain_over_default(self) -> float | None:
        if self.best is None or not self.default_value:
            return None
        return (self.best[1] - self.default_value) / self.default_value


class TuneListener(RunListener, Protocol):
    def trial_finished(self, label: str, number: int, total: int, params: dict[str, Scalar], outcome: Outcome,
                       reused: bool) -> None: ...


class QuietTuneListener(QuietListener):
    def trial_finished(self, label: str, number: int, total: int, params: dict[str, Scalar], outcome: Outcome,
                       reused: bool) -> None:
        pass


def storage_url(tune: TuneSpec, results_dir: Path) -> str:
    if tune.storage:
        return tune.storage
    results_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(results_dir / 'study.db').resolve()}"


async def tune_server(
    scenario: Scenario,
    base: ServerSettings,
    store: ResultStore,
    *,
    listener: Any,
    observer: Observer | None,
    stop: asyncio.Event | None,
) -> StudyReport:
    tune = scenario.tune
    assert tune is not None
    if tune.objective == "capacity":
        from hpload.scenarios.capacity_tune import tune_capacity_server

        return await tune_capacity_server(scenario, base, store, listener=listener, observer=observer, stop=stop)  # type: ignore[no-any-return]
    space = tune.space.flat()
    study_name = tune.study_name or f"{scenario.name}-{base.label}"
    if tune.study_name and len(scenario.servers) > 1:
        study_name = f"{tune.study_name}-{base.label}"
    storage = storage_url(tune, store.root)
    defaults = default_point(tune, space, base, scenario)
    seed = tune.seed
    if tune.storage and seed is not None:
        # A shared study: processes started together must not draw the same random start-up points.
        seed = seed * 1_000_003 + os.getpid()
    tuner = await asyncio.to_thread(
        Tuner,
        space,
        sampler=tune.sampler,
        seed=seed,
        storage=storage,
        study_name=study_name,
        defaults=[defaults] if defaults else None,
        n_startup_trials=tune.n_startup_trials,
        heartbeat_s=tune.heartbeat_s,
    )
    report = StudyReport(label=base.label, study_name=study_name, storage=storage)
    progress = PointProgress(store.points_dir, listener, observer)
    keeper = ServerKeeper(workdir=store.root / "logs", listener=progress)
    rng = random.Random(seed)
    repeats = 0
    try:
        # Asks are bounded: when every point of a small space is known, proposals only repeat.
        for _ in range(tune.n_trials * 20):
            if tuner.n_measured >= tune.n_trials or (stop is not None and stop.is_set()):
                break
            await asyncio.to_thread(fail_stale, tuner.study)  # a dead host's trial is failed and its point re-queued
            proposal: Proposal = await asyncio.to_thread(tuner.ask)
            server, workload, load = apply_settings(
                base, scenario.workload, scenario.load, dict(proposal.params), f"tune ({base.label})"
            )
            point = Point(server=server, workload=workload, load=load, settings=dict(proposal.params))
            with beating(tuner.study, proposal.trial):
                outcome, reused = await _outcome_for(tuner, proposal, point, store, keeper, scenario, progress, stop)
            if outcome is None:  # stopped mid-measurement: the trial stays open and is re-queued on resume
                break
            await asyncio.to_thread(tuner.tell, proposal, outcome)
            report.trials.append((proposal.params, outcome))
            report.measured += 0 if reused else 1
            report.reused += 1 if reused else 0
            repeats = repeats + 1 if reused else 0
            if repeats >= REPEATS_BEFORE_EXPLORING:
                repeats = 0
                if not await asyncio.to_thread(tuner.explore, rng):
                    break  # every point of the space is known
            if defaults and proposal.params == defaults and outcome.feasible:
                report.default_value = outcome.value
            listener.trial_finished(base.label, tuner.n_measured, tune.n_trials, proposal.params, outcome, reused)
    finally:
        progress.end()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(keeper.close())
    await asyncio.to_thread(settle, tuner.study)
    report.best = await asyncio.to_thread(tuner.best)
    if report.default_value is None and defaults:
        for params, outcome in _told(tuner):
            if params == defaults and outcome.feasible:
                report.default_value = outcome.value
    return report


def _told(tuner: Tuner) -> list[tuple[dict[str, Scalar], Outcome]]:
    from hpload.scenarios.space import decode_params
    from hpload.scenarios.tuning import _outcome_from_attrs

    out = []
    for trial in tuner.study.get_trials(deepcopy=False):
        if trial.state.name == "COMPLETE" and "outcome" in trial.user_attrs:
            out.append((decode_params(tuner.space, trial.params), _outcome_from_attrs(trial.user_attrs["outcome"])))
    return out


async def _outcome_for(
    tuner: Tuner,
    proposal: Proposal,
    point: Point,
    store: ResultStore,
    keeper: ServerKeeper,
    scenario: Scenario,
    progress: PointProgress,
    stop: asyncio.Event | None,
) -> tuple[Outcome | None, bool]:
    tune = scenario.tune
    assert tune is not None
    known = tuner.remembered(proposal)
    if known is not None:
        return known, True
    # Another machine sharing the study is measuring this very point: wait for its outcome rather than measure
    # it twice (bounded). That machine may have died mid-trial: its heartbeat stops, and failing stale trials here
    # ends the wait within a grace period (before, a survivor that drew a dead host's point waited SHARED_WAIT_S,
    # since stale trials were failed only before an ask).
    deadline = time.monotonic() + SHARED_WAIT_S
    while time.monotonic() < deadline:
        await asyncio.to_thread(fail_stale, tuner.study)
        if not await asyncio.to_thread(tuner.measured_elsewhere, proposal):
            break
        await asyncio.sleep(0.5)
        known = await asyncio.to_thread(tuner.remembered, proposal)
        if known is not None:
            return known, True
    record = store.get(point.point_id)
    if record is not None and record.ok:
        return outcome_of(record, tune.objective, scenario.slo), True
    progress.begin(point.point_id, point.label)
    result, error = await measure(
        keeper, point.server, point.workload, point.load, scenario.slo, observer=progress.observe, stop=stop
    )
    if stop is not None and stop.is_set():
        return None, False
    record = store.save(make_record(point, result, error, source="tune"), result)
    progress.end()
    return outcome_of(record, tune.objective, scenario.slo), False


async def tune_scenario(
    scenario: Scenario,
    *,
    results_dir: Path | None = None,
    listener: Any = None,
    observer: Observer | None = None,
    stop: asyncio.Event | None = None,
) -> list[StudyReport]:
    """One study per server of the scenario, in order."""
    if scenario.tune is None:
        from hpload.errors import HploadError

        raise HploadError(f"scenario {scenario.name}: no [tune] table; fix: add one (see scenarios/slo-tune.toml)")
    store = ResultStore(results_dir or default_results_dir(scenario))
    store.prepare(scenario.model_dump(mode="json", exclude={"servers": {"__all__": {"api_key"}}}))
    listener = listener or QuietTuneListener()
    reports = []
    for base in scenario.servers:
        if stop is not None and stop.is_set():
            break
        reports.append(await tune_server(scenario, base, store, listener=listener, observer=observer, stop=stop))
    return reports
