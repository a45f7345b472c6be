"""``hpload tune`` with objective ``capacity``: Optuna over server settings, each trial a restart plus a capacity
search on the load axis (docs/capacity.md, "Tuning for capacity").

How it spends little on poor configurations. Every trial first runs a *coarse* search (``capacity.coarse_precision``,
probes of ``coarse_probe_fraction`` of the length, no replicates). Only a configuration whose coarse interval could
hold the best capacity (no failing rate found, or the lowest failing rate above the best capacity so far), and the
engine defaults (their gain is reported), get the *precise* search, on the same server process (no second restart),
starting at the coarse capacity. A configuration told from the coarse search is told its coarse capacity, the
highest rate that passed: a lower bound, which is all the sampler needs to rank it below the best.

A configuration that crashes or runs out of memory stops its search at the first failed start or crash
(``on_failure = "stop"``) and is told as an infeasible trial. Restarts are counted as servers start, and the study
(trials, best so far, gain over the defaults, restarts) is written to ``tune_capacity/<label>.json`` after every
trial; probes and capacity records are on disk as they finish, so a killed study resumes where it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from hpload.errors import HploadError
from hpload.loadgen.snapshot import Observer
from hpload.scenarios.capacity import CapacitySpec, check_slo
from hpload.scenarios.capacity_run import SearchSettings, SearchStopped, find_capacity
from hpload.scenarios.points import apply_settings
from hpload.scenarios.results import ResultStore, write_json_atomic
from hpload.scenarios.runner import ServerKeeper
from hpload.scenarios.schema import Scenario
from hpload.scenarios.space import ParamSpec, Scalar
from hpload.scenarios.tuning import REPEATS_BEFORE_EXPLORING, Outcome, Tuner
from hpload.servers.kinds import ServerSettings

STUDY_DIR = "tune_capacity"


def trial_label(base: str, params: dict[str, Scalar]) -> str:
    """One label per configuration, stable across runs, so a rerun finds its probes and records."""
    digest = hashlib.sha1(json.dumps(sorted(params.items()), default=str).encode()).hexdigest()[:8]
    return f"{base}-{digest}"


def check_space_supported(base: ServerSettings, space: dict[str, ParamSpec]) -> None:
    """Before any start: every vLLM setting the space can set must exist in the installed vLLM."""
    if base.kind != "vllm":
        return
    from hpload.servers.vllm_features import OPTIONAL_FLAGS, check_settings

    values: dict[str, object] = {}
    for key, spec in space.items():
        table, _, name = key.partition(".")
        if table == "server" and name in OPTIONAL_FLAGS:
            grid: list[Any] = list(spec.values or spec.choices or [])
            grid.append(spec.low)
            values[name] = next((v for v in grid if v is not None), None)
    check_settings(values, where="tune.space.server")
    check_settings({name: getattr(base, name, None) for name in OPTIONAL_FLAGS}, where=f"server {base.label}")


def coarse_spec(spec: CapacitySpec) -> CapacitySpec:
    return spec.model_copy(update={"precision": max(spec.coarse_precision, spec.precision),
                                   "probe_s": spec.probe_s * spec.coarse_probe_fraction, "replicates": 0})


class _CountingListener:
    """Counts server starts (the restarts a study spends) and passes everything on."""

    def __init__(self, inner: Any, state: dict[str, Any], save: Any) -> None:
        self._inner, self._state, self._save = inner, state, save

    def server_starting(self, settings: ServerSettings) -> None:
        self._state["restarts"] = int(self._state.get("restarts", 0)) + 1
        self._save()
        self._inner.server_starting(settings)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


async def tune_capacity_server(
    scenario: Scenario,
    base: ServerSettings,
    store: ResultStore,
    *,
    listener: Any,
    observer: Observer | None,
    stop: asyncio.Event | None,
) -> Any:
    from hpload.scenarios.tune_runner import StudyReport, default_point, storage_url

    tune = scenario.tune
    assert tune is not None
    check_slo(scenario.slo)
    spec = scenario.capacity or CapacitySpec()
    space = tune.space.flat()
    if not space:
        raise HploadError("tune.space: empty; fix: add at least one [tune.space.server.X] setting to tune")
    check_space_supported(base, space)
    study_name = tune.study_name or f"{scenario.name}-{base.label}"
    storage = storage_url(tune, store.root)
    defaults = default_point(tune, space, base, scenario)
    seed = tune.seed if not tune.storage or tune.seed is None else tune.seed * 1_000_003 + os.getpid()
    tuner = await asyncio.to_thread(Tuner, space, sampler=tune.sampler, seed=seed, storage=storage,
                                    study_name=study_name, defaults=[defaults] if defaults else None,
                                    n_startup_trials=tune.n_startup_trials)  # fmt: skip
    state_path = store.root / STUDY_DIR / f"{base.label}.json"
    state: dict[str, Any] = json.loads(state_path.read_text()) if state_path.is_file() else {}
    state.setdefault("label", base.label)
    state.setdefault("restarts", 0)
    state.setdefault("trials", [])
    state["study"], state["slo"] = study_name, scenario.slo.model_dump(mode="json", exclude_none=True)
    state["defaults"] = defaults

    def save() -> None:
        write_json_atomic(state_path, state)

    keeper = ServerKeeper(workdir=store.root / "logs", listener=_CountingListener(listener, state, save))
    report = StudyReport(label=base.label, study_name=study_name, storage=storage)
    import random

    rng = random.Random(seed)
    repeats = 0

    async def best_now() -> tuple[dict[str, Scalar], float] | None:
        told = await asyncio.to_thread(tuner.best)
        engine = _engine_best(state)
        return engine if engine is not None and (told is None or engine[1] > told[1]) else told

    try:
        if len(defaults) < len(space) and "engine_defaults" not in state:
            # Some tuned setting is left to the engine (None: vLLM decides): the study cannot name that point, so
            # the server as configured is measured first, outside the sampler, as the defaults the gain is over.
            row = await _trial(scenario, spec, base.model_copy(update={"label": f"{base.label}-defaults"}),
                               scenario.workload, store, keeper, observer, stop, best=None, precise_anyway=True,
                               number=0)  # fmt: skip
            if row is None:
                return report
            row.update(params={k: defaults.get(k, "engine default") for k in space}, default=True, best_so_far=None,
                       restarts=state["restarts"])  # fmt: skip
            state["engine_defaults"] = row
            state["default_capacity"] = row["capacity_rps"]
            state["trials"] = [row, *state["trials"]]
            save()
            say = getattr(listener, "capacity_trial", None)
            if say is not None:
                say(base.label, 0, tune.n_trials, row, state)
        for _ in range(tune.n_trials * 20):
            if tuner.n_measured >= tune.n_trials or (stop is not None and stop.is_set()):
                break
            proposal = await asyncio.to_thread(tuner.ask)
            known = await asyncio.to_thread(tuner.remembered, proposal)
            if known is not None:
                await asyncio.to_thread(tuner.tell, proposal, known)
                report.reused += 1
                repeats += 1
                if repeats >= REPEATS_BEFORE_EXPLORING:
                    repeats = 0
                    if not await asyncio.to_thread(tuner.explore, rng):
                        break
                continue
            repeats = 0
            params = dict(proposal.params)
            server, workload, _load = apply_settings(base, scenario.workload, scenario.load, params,
                                                     f"tune ({base.label})")  # fmt: skip
            server = server.model_copy(update={"label": trial_label(base.label, params)})
            is_default = bool(defaults) and params == defaults
            best = await best_now()
            row = await _trial(scenario, spec, server, workload, store, keeper, observer, stop,
                               best=None if best is None else best[1], precise_anyway=is_default,
                               number=tuner.n_measured + 1)  # fmt: skip
            if row is None:  # stopped mid-search: the trial stays open and is re-queued on resume
                break
            outcome = Outcome(value=row["capacity_rps"], error=row["error"], result_path=row["record"])
            await asyncio.to_thread(tuner.tell, proposal, outcome)
            report.measured += 1
            report.trials.append((params, outcome))
            if is_default and outcome.feasible:
                state["default_capacity"] = outcome.value
            best = await best_now()
            row.update(params=params, default=is_default, best_so_far=None if best is None else best[1],
                       restarts=state["restarts"])  # fmt: skip
            state["trials"] = [t for t in state["trials"] if t["label"] != row["label"]] + [row]
            _summarise(state, best)
            save()
            say = getattr(listener, "capacity_trial", None)
            if say is not None:
                say(base.label, tuner.n_measured, tune.n_trials, row, state)
            else:
                listener.trial_finished(base.label, tuner.n_measured, tune.n_trials, params, outcome, False)
    finally:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(keeper.close())
    report.best = await asyncio.to_thread(tuner.best)
    report.default_value = state.get("default_capacity")
    if report.best is None or (report.default_value or 0) > report.best[1]:
        report.best = _engine_best(state) or report.best
    _summarise(state, report.best)
    save()
    return report


def _engine_best(state: dict[str, Any]) -> tuple[dict[str, Scalar], float] | None:
    row = state.get("engine_defaults")
    if row is None or row["capacity_rps"] is None:
        return None
    return dict(row["params"]), float(row["capacity_rps"])


def _summarise(state: dict[str, Any], best: tuple[dict[str, Scalar], float] | None) -> None:
    state["best"] = None if best is None else {"params": best[0], "capacity_rps": best[1]}
    default = state.get("default_capacity")
    state["gain_over_default"] = (best[1] - default) / default if best is not None and default else None


async def _trial(
    scenario: Scenario,
    spec: CapacitySpec,
    server: ServerSettings,
    workload: Any,
    store: ResultStore,
    keeper: ServerKeeper,
    observer: Observer | None,
    stop: asyncio.Event | None,
    *,
    best: float | None,
    precise_anyway: bool,
    number: int,
) -> dict[str, Any] | None:
    """One configuration: the coarse search, then the precise one if it could be the best. None when stopped."""

    def settings(s: CapacitySpec, stage: str, **extra: Any) -> SearchSettings:
        return SearchSettings(workload=workload, slo=scenario.slo, spec=s, base_load=scenario.load, seed=scenario.seed,
                              on_failure="stop", observer=observer, stop=stop,
                              extra={"tune": {"trial": number, "stage": stage, **extra}})  # fmt: skip

    record_path = store.root / "capacity" / f"{server.label}.json"
    try:
        coarse = await find_capacity(server, settings(coarse_spec(spec), "coarse"), store, keeper)
        crashed = coarse["server_crashes"]
        lo, hi = coarse["interval"]["lo"], coarse["interval"]["hi"]
        could_be_best = best is None or hi is None or hi > best
        stage = "coarse"
        record = coarse
        if not crashed and (precise_anyway or could_be_best):
            # Keep the coarse record beside the study; capacity/<label>.json becomes the precise one.
            coarse_path = store.root / STUDY_DIR / f"{server.label}.coarse.json"
            coarse_path.parent.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - one small local file
            record_path.replace(coarse_path)  # noqa: ASYNC240
            start = max(float(lo or spec.start_rate), spec.min_rate)
            precise_spec = spec.model_copy(update={"start_rate": min(start, spec.max_rate)})
            record = await find_capacity(server, settings(precise_spec, "precise", coarse_interval=[lo, hi]), store,
                                         keeper)  # fmt: skip
            crashed = record["server_crashes"]
            stage = "precise"
    except SearchStopped:
        return None
    failed = bool(crashed) and not record["capacity_rps"]
    return {
        "label": server.label,
        "stage": stage,
        "capacity_rps": None if failed else record["capacity_rps"],
        "interval": record["interval"],
        "coarse_interval": {"lo": coarse["interval"]["lo"], "hi": coarse["interval"]["hi"]},
        "probe_seconds": coarse["probe_seconds"] + (record["probe_seconds"] if record is not coarse else 0.0),
        "error": crashed[0] if failed else None,
        "reason": record["reason"],
        "record": str(record_path),
    }


def load_studies(root: Path) -> list[dict[str, Any]]:
    folder = root / STUDY_DIR
    if not folder.is_dir():
        return []
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json")) if not p.name.endswith(".coarse.json")]


def trial_line(label: str, number: int, total: int, row: dict[str, Any], state: dict[str, Any]) -> str:
    """One trial for people: settings, capacity and interval, best so far, gain over the defaults, restarts."""
    settings = " ".join(f"{k.split('.', 1)[-1]}={v}" for k, v in row["params"].items())
    iv = row["interval"]
    if row["capacity_rps"] is None:
        verdict = f"FAILED ({row['error']})"
    else:
        hi = "-" if iv["hi"] is None else f"{iv['hi']:.3g}"
        lo = "-" if iv["lo"] is None else f"{iv['lo']:.3g}"
        verdict = f"capacity {row['capacity_rps']:.3g} req/s [{lo}, {hi}) {row['stage']}"
    best = row.get("best_so_far")
    gain = state.get("gain_over_default")
    tail = f"best {best:.3g}" if best is not None else "best -"
    tail += f", {gain:+.0%} vs defaults" if gain is not None else ""
    mark = " (defaults)" if row.get("default") else ""
    return (f"trial {number}/{total} {label} {settings}{mark}: {verdict}; {tail}; "
            f"{state.get('restarts', 0)} restarts")


def markdown(studies: list[dict[str, Any]]) -> list[str]:
    """``hpload report``'s section: every trial, the best, the gain over the defaults and the restarts spent."""
    md: list[str] = []
    for st in studies:
        md += [f"## Capacity tuning: {st['label']} (study {st.get('study')})", ""]
        best, gain = st.get("best"), st.get("gain_over_default")
        line = "No feasible trial" if not best else (
            f"Best capacity {best['capacity_rps']:.4g} req/s at "
            + ", ".join(f"{k} = {v}" for k, v in best["params"].items()))
        if gain is not None:
            line += f"; defaults {st['default_capacity']:.4g} req/s, gain {gain:+.1%}"
        md += [f"{line}; {st.get('restarts', 0)} restarts.", ""]
        md += ["| trial | settings | capacity req/s | interval [lo, hi) | search | best so far | restarts |",
               "|---|---|---|---|---|---|---|"]
        for i, t in enumerate(st["trials"], 1):
            iv = t["interval"]
            cap = "failed: " + str(t["error"]) if t["capacity_rps"] is None else f"{t['capacity_rps']:.4g}"
            settings = ", ".join(f"{k.split('.', 1)[-1]}={v}" for k, v in t["params"].items())
            settings += " (defaults)" if t.get("default") else ""
            best_so_far = "-" if t.get("best_so_far") is None else f"{t['best_so_far']:.4g}"
            md.append(f"| {i} | {settings} | {cap} | [{iv['lo']}, {iv['hi']}) | {t['stage']} | {best_so_far} | "
                      f"{t.get('restarts', '-')} |")
        md.append("")
    return md
