"""Optuna ask/tell around any objective: live servers (``hpload tune``) or a recorded landscape (replay).

The outer loop owns the measurement, because a trial may need a server restarted with new settings; Optuna only
proposes points and learns from outcomes. SLOs are constraints (``trial.set_constraint``, <= 0 is feasible), and a
trial that crashed or ran out of memory is told as infeasible rather than failed, so the sampler learns to avoid
that region instead of proposing it again. A point already measured is answered from memory: on a real server a
repeat costs minutes and tells the sampler nothing new.
"""

from __future__ import annotations

import datetime
import itertools
import math
import os
import random
import socket
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from hpload.errors import HploadError
from hpload.scenarios.space import ParamSpec, Scalar, decode_params, encode_params

if TYPE_CHECKING:
    import optuna

SamplerName = Literal["tpe", "gp", "random", "grid"]
SAMPLERS: tuple[str, ...] = ("tpe", "gp", "random", "grid")
FAILED_KEY = "failed"  # the constraint that marks a crashed / out-of-memory trial
REPEATS_BEFORE_EXPLORING = 2  # consecutive proposals of known points before an unmeasured one is enqueued


@dataclass(frozen=True)
class Outcome:
    """What one measured point gave. ``value`` is None when the point failed (crash, OOM, server error)."""

    value: float | None
    constraints: Mapping[str, float] = field(default_factory=dict)  # name -> excess over the limit; <= 0 meets it
    error: str | None = None
    result_path: str | None = None

    @property
    def failed(self) -> bool:
        return self.value is None or (isinstance(self.value, float) and math.isnan(self.value))

    @property
    def feasible(self) -> bool:
        return not self.failed and all(v <= 0 for v in self.constraints.values())


@dataclass
class Proposal:
    trial: Any  # optuna.Trial; Any so this module imports without Optuna
    params: dict[str, Scalar]  # decoded setting values, keyed like the space ("server.max_num_seqs")

    @property
    def key(self) -> tuple[tuple[str, Scalar], ...]:
        return tuple(sorted(self.params.items()))


def make_sampler(
    name: str,
    space: Mapping[str, ParamSpec],
    *,
    seed: int | None = None,
    n_startup_trials: int | None = None,
) -> optuna.samplers.BaseSampler:
    import optuna

    if name == "tpe":
        # Tuned on the recorded A100 landscapes (benchmarks/bench_tuner.py): multivariate TPE models how batch size
        # and parallelism interact (their peaks move together); a 3-trial random start and a good group of the top
        # quarter leave most of a small budget to the model.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            # `gamma` is deprecated since Optuna 4.9 (removal planned for 6.0); the top-quarter split gains about one
            # measurement on the HF landscapes, where the default's top-10% holds a single point for a long time.
            warnings.simplefilter("ignore", FutureWarning)
            return optuna.samplers.TPESampler(
                seed=seed,
                n_startup_trials=3 if n_startup_trials is None else n_startup_trials,
                multivariate=True,
                group=True,
                gamma=_top_quarter,
            )
    if name == "gp":
        return optuna.samplers.GPSampler(
            seed=seed,
            n_startup_trials=4 if n_startup_trials is None else n_startup_trials,
            deterministic_objective=False,
            warn_independent_sampling=False,
        )
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        grid = {key: [spec.encode(v) for v in spec.grid()] for key, spec in space.items()}

        class AskTellGrid(optuna.samplers.GridSampler):
            # GridSampler calls study.stop() once the grid is spent, which Optuna allows only inside optimize();
            # the ask/tell loop stops on its own budget, and proposals after that repeat known points.
            def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
                return None

        return AskTellGrid(grid, seed=seed)
    raise HploadError(f"tune.sampler: unknown sampler '{name}'; fix: use one of {', '.join(SAMPLERS)}")


def _open_study(storage: str | None, sampler: Any, study_name: str, heartbeat_s: int | None = None) -> optuna.Study:
    """Create or join the study. Several machines starting together race to create the schema on an empty
    database; the loser's error is transient, so it retries after the winner has finished."""
    import optuna
    import sqlalchemy.exc

    from hpload.scenarios.tune_heartbeat import heartbeat_storage

    for attempt in range(6):
        try:
            return optuna.create_study(
                storage=heartbeat_storage(storage, heartbeat_s) if heartbeat_s else storage, sampler=sampler,
                study_name=study_name, direction="maximize", load_if_exists=True,
            )
        except sqlalchemy.exc.SQLAlchemyError:
            if attempt == 5:
                raise
            time.sleep(0.5 + random.random())
    raise AssertionError("unreachable")


def _top_quarter(n: int) -> int:
    return max(1, min(round(0.25 * n), 25))


def _suggest(trial: Any, name: str, spec: ParamSpec) -> Any:
    if spec.values is not None:
        return trial.suggest_int(name, 0, len(spec.values) - 1)
    if spec.choices is not None:
        return trial.suggest_categorical(name, spec.choices)
    assert spec.low is not None and spec.high is not None
    if spec.is_int:
        return trial.suggest_int(name, int(spec.low), int(spec.high), log=spec.log, step=int(spec.step or 1))
    return trial.suggest_float(name, float(spec.low), float(spec.high), log=spec.log, step=spec.step)


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Tuner:
    """One study: ``ask()`` a point, measure it, ``tell()`` the outcome; resumable through ``storage``."""

    def __init__(
        self,
        space: Mapping[str, ParamSpec],
        *,
        sampler: str = "tpe",
        seed: int | None = None,
        storage: str | None = None,
        study_name: str = "hpload",
        defaults: list[dict[str, Scalar]] | None = None,
        n_startup_trials: int | None = None,
        heartbeat_s: int | None = None,
    ) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        if not space:
            raise HploadError("tune.space: empty; fix: add at least one [tune.space.server.X] or [tune.space.load.X]")
        self.space = dict(space)
        self.sampler_name = sampler
        self.study = _open_study(
            storage, make_sampler(sampler, self.space, seed=seed, n_startup_trials=n_startup_trials), study_name,
            heartbeat_s,
        )
        self._memory: dict[tuple[tuple[str, Scalar], ...], Outcome] = {}
        self._recover_stale()
        for point in defaults or []:
            # skip_if_exists keeps a resumed or shared study from measuring the defaults twice.
            self.study.enqueue_trial(encode_params(self.space, point), skip_if_exists=True)
        for trial in self.study.get_trials(deepcopy=False):
            if trial.state.name == "COMPLETE" and "outcome" in trial.user_attrs:
                params = decode_params(self.space, trial.params)
                self._memory[tuple(sorted(params.items()))] = _outcome_from_attrs(trial.user_attrs["outcome"])

    def _recover_stale(self) -> None:
        """Trials this host started in a process that is gone (killed mid-measurement) are failed and re-queued."""
        from optuna.trial import TrialState

        host = socket.gethostname()
        now = datetime.datetime.now()
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            owner = str(trial.user_attrs.get("owner", ""))
            owner_host, _, pid = owner.rpartition(":")
            if not owner:
                # Killed between creating the trial and marking it (two storage writes): stale once it is old.
                started = trial.datetime_start
                if started is None or (now - started).total_seconds() < 60:
                    continue
            elif owner_host != host or not pid.isdigit() or _pid_alive(int(pid)):
                continue
            self.study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
            if trial.params:
                self.study.enqueue_trial(dict(trial.params), skip_if_exists=True)

    @property
    def n_complete(self) -> int:
        from optuna.trial import TrialState

        return len(self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))

    @property
    def n_measured(self) -> int:
        """Distinct points told so far (by any process sharing the study): a repeat answered from memory is free."""
        from optuna.trial import TrialState

        seen = {
            tuple(sorted(t.params.items()))
            for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        }
        return len(seen)

    def ask(self) -> Proposal:
        # Mark the owner before sampling (which can take seconds): a trial left RUNNING by a killed process is then
        # always recognisable as this host's and recovered on resume.
        trial = self.study.ask()
        trial.set_user_attr("owner", _owner())
        for name, spec in self.space.items():
            _suggest(trial, name, spec)
        return Proposal(trial=trial, params=decode_params(self.space, trial.params))

    def remembered(self, proposal: Proposal) -> Outcome | None:
        """The outcome of a point already told, by this process or (shared storage) by another one."""
        known = self._memory.get(proposal.key)
        if known is not None:
            return known
        from optuna.trial import TrialState

        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if "outcome" in trial.user_attrs and decode_params(self.space, trial.params) == proposal.params:
                known = _outcome_from_attrs(trial.user_attrs["outcome"])
                self._memory[proposal.key] = known
                return known
        return None

    def explore(self, rng: random.Random) -> bool:
        """Enqueue a point nobody has measured yet; False when every point of the space is known.

        Model-based samplers converge and then re-propose their favourite point forever; each repeat is free but
        teaches nothing. After a few repeats the loop calls this, so the budget buys information instead.
        """
        grids: list[list[Scalar]] = []
        for spec in self.space.values():
            try:
                grids.append(spec.grid())
            except ValueError:  # a float range without a step: every random draw is new
                assert spec.low is not None and spec.high is not None
                grids.append([])
        known = set(self._memory)
        names = list(self.space)
        size = math.prod(len(g) for g in grids) if all(grids) else 0
        if 0 < size <= 100_000:
            unseen = [combo for combo in itertools.product(*grids) if tuple(sorted(zip(names, combo, strict=True))) not in known]
            if not unseen:
                return False
            point = dict(zip(names, rng.choice(unseen), strict=True))
        else:
            point = {}
            for name, grid in zip(names, grids, strict=True):
                spec = self.space[name]
                point[name] = rng.choice(grid) if grid else rng.uniform(float(spec.low), float(spec.high))  # type: ignore[arg-type]
        self.study.enqueue_trial(encode_params(self.space, point))
        return True

    def measured_elsewhere(self, proposal: Proposal) -> bool:
        """True while an earlier trial of the same point is being measured by another process sharing the study.

        Only earlier trials count, so two processes that drew the same point at once never wait for each other.
        """
        from optuna.trial import TrialState

        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if trial.number < proposal.trial.number and decode_params(self.space, trial.params) == proposal.params:
                return True
        return False

    def tell(self, proposal: Proposal, outcome: Outcome) -> None:
        trial = proposal.trial
        trial.set_user_attr("outcome", _outcome_to_attrs(outcome))
        trial.set_user_attr("settings", {k: v for k, v in proposal.params.items()})
        for name, excess in outcome.constraints.items():
            trial.set_constraint(name, float(excess))
        # A failed point is infeasible (TPE files it with the bad group; GP's feasibility model learns the
        # out-of-memory edge) and is told the worst value seen so far rather than 0: a cliff to 0 would drag GP's
        # regression of the throughput surface down around every failure.
        trial.set_constraint(FAILED_KEY, 1.0 if outcome.failed else 0.0)
        if outcome.failed:
            seen = [o.value for o in self._memory.values() if not o.failed and o.value is not None]
            value = min(seen) if seen else 0.0
        else:
            value = float(outcome.value)  # type: ignore[arg-type]
        self.study.tell(trial, value)
        self._memory[proposal.key] = outcome

    def best(self) -> tuple[dict[str, Scalar], float] | None:
        """The best feasible point told so far, by anyone sharing the study."""
        from optuna.trial import TrialState

        best: tuple[dict[str, Scalar], float] | None = None
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if any(v > 0 for v in trial.constraints.values()) or trial.value is None:
                continue
            if best is None or trial.value > best[1]:
                best = (decode_params(self.space, trial.params), float(trial.value))
        return best


def _outcome_to_attrs(outcome: Outcome) -> dict[str, Any]:
    return {
        "value": outcome.value,
        "constraints": dict(outcome.constraints),
        "error": outcome.error,
        "result_path": outcome.result_path,
    }


def _outcome_from_attrs(attrs: Mapping[str, Any]) -> Outcome:
    return Outcome(
        value=attrs.get("value"),
        constraints=dict(attrs.get("constraints") or {}),
        error=attrs.get("error"),
        result_path=attrs.get("result_path"),
    )
