"""The scenario model: servers, workload, load, SLOs, thresholds, repeats, and a sweep or a tuning study.

Every table is strict (``extra="forbid"``): a misspelt key fails before any server starts. The server, workload,
load and SLO tables are the servers' and the load generator's own models, embedded as they are, so a scenario file
and a direct API call accept exactly the same fields. Parsing a file (with line numbers in errors) lives in
``hpload.scenarios.loader``.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hpload.loadgen.slo import Limit
from hpload.loadgen.specs import SLO, LoadSpec, WorkloadSpec
from hpload.scenarios.capacity import CapacitySpec
from hpload.scenarios.space import ParamSpec
from hpload.servers.kinds import KINDS, ServerSettings

SERVER_MODELS: dict[str, type[BaseModel]] = {name: kind.settings for name, kind in KINDS.items()}
_THRESHOLD = re.compile(r"^\s*(<=|>=|<|>|==)\s*(-?[0-9.]+(?:e-?[0-9]+)?)\s*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Threshold(_Strict):
    """A k6-style pass condition on one summary metric, written ``"< 500"`` in the file."""

    metric: str
    op: Literal["<", "<=", ">", ">=", "=="]
    limit: float

    def check(self, value: float) -> bool:
        return Limit(self.metric, self.op, self.limit).holds(value)

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.limit:g}"


class SweepSpec(_Strict):
    """A grid over settings. Each key names a field; each value lists the settings to try."""

    mode: Literal["cartesian", "zip"] = "cartesian"
    """cartesian: every combination; zip: the i-th value of every list together (lists of equal length)."""
    server: dict[str, list[Any]] = Field(default_factory=dict)
    """Fields of every server in the scenario (each must have the field), e.g. ``max_num_seqs = [8, 16]``."""
    servers: dict[str, dict[str, list[Any]]] = Field(default_factory=dict)
    """Fields of one server, by label: ``[sweep.servers.hf] batch_size = [1, 8]``."""
    load: dict[str, list[Any]] = Field(default_factory=dict)
    """Fields of ``[load]``, e.g. ``concurrency = [1, 4, 16]`` or ``rate = [2.0, 8.0]``."""
    workload: dict[str, list[Any]] = Field(default_factory=dict)
    """Fields of ``[workload]``, e.g. ``max_tokens = [16, 128]``."""


class TuneSpace(_Strict):
    """Tuned settings by table; each entry is a range, ordered ``values`` or ``choices``."""

    server: dict[str, ParamSpec] = Field(default_factory=dict)
    load: dict[str, ParamSpec] = Field(default_factory=dict)
    workload: dict[str, ParamSpec] = Field(default_factory=dict)

    def flat(self) -> dict[str, ParamSpec]:
        out: dict[str, ParamSpec] = {}
        for table in ("server", "load", "workload"):
            for name, spec in getattr(self, table).items():
                out[f"{table}.{name}"] = spec
        return out


class TuneSpec(_Strict):
    """An Optuna study over server and load settings, one per server of the scenario."""

    sampler: Literal["tpe", "gp", "random", "grid"] = "tpe"
    objective: Literal["output_throughput", "request_goodput", "request_throughput", "capacity"] = "output_throughput"
    """What to maximise; ``request_goodput`` counts only requests that met the per-request SLO limits; ``capacity``
    runs a capacity search (the ``[capacity]`` table) per server configuration (docs/capacity.md)."""
    n_trials: int = Field(default=20, ge=1)
    """Measured points per server (a study resumed from storage counts the trials it already has)."""
    seed: int | None = 0
    storage: str | None = None
    """Any Optuna storage URL (``postgresql://...`` to share a study between machines); None = SQLite in the
    results directory, so a rerun resumes."""
    study_name: str | None = None
    """None = ``<scenario name>-<server label>``."""
    heartbeat_s: int = Field(default=10, ge=1)
    """Seconds between a trial's heartbeats in the storage; a trial silent for 3 beats (its host died) is failed and
    its point queued again, by any process sharing the study."""
    space: TuneSpace = Field(default_factory=TuneSpace)
    defaults: dict[str, Any] = Field(default_factory=dict)
    """The engine's defaults, measured first, keyed like the space (``"server.max_num_seqs" = 256``); settings the
    space has but this table lacks come from the server's own table."""
    n_startup_trials: int | None = Field(default=None, ge=0)


class Scenario(_Strict):
    """One scenario file."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    servers: list[ServerSettings] = Field(min_length=1)
    workload: WorkloadSpec = Field(default_factory=WorkloadSpec)
    load: LoadSpec
    slo: SLO = Field(default_factory=SLO)
    thresholds: dict[str, str] = Field(default_factory=dict)
    """k6-style: summary metric -> condition, e.g. ``p99_ttft_ms = "< 2000"``; any broken one fails the run
    (exit code 99). Metric names are those of the result summary (vLLM bench serve's)."""
    repeats: int = Field(default=1, ge=1)
    """Each point this many times, with seeds ``seed``, ``seed + 1``, ... for prompts and arrivals."""
    seed: int = 0
    results_dir: str | None = None
    """None = ``results/<name>`` under the current directory."""
    save_requests: bool = False
    """Also keep one JSON line per request (``points/<point>.requests.jsonl``): ttft, e2el, tpot, every
    inter-token gap, errors, and the ``X-Request-Id`` it was sent with, to find it in the server's log."""
    on_failure: Literal["continue", "stop"] = "continue"
    """When a point fails (its server crashed or never came up): go on with the next point, or stop the sweep."""
    sweep: SweepSpec | None = None
    tune: TuneSpec | None = None
    capacity: CapacitySpec | None = None
    """A capacity search per server (``hpload capacity``, or ``hpload run`` on a scenario with this table)."""

    @field_validator("thresholds")
    @classmethod
    def _thresholds(cls, value: dict[str, str]) -> dict[str, str]:
        for metric, text in value.items():
            if not _THRESHOLD.match(str(text)):
                raise ValueError(f"{metric}: '{text}' is not a condition; fix: write it like \"< 500\" or \">= 10\"")
        return value

    @model_validator(mode="after")
    def _check(self) -> Scenario:
        labels = [s.label for s in self.servers]
        dupes = sorted({x for x in labels if labels.count(x) > 1})
        if dupes:
            raise ValueError(f"servers: label '{dupes[0]}' is used twice; fix: give each server its own label")
        if self.sweep is not None:
            _check_sweep(self.sweep, self.servers)
        if self.tune is not None:
            _check_fields("tune.space.load", self.tune.space.load, LoadSpec)
            _check_fields("tune.space.workload", self.tune.space.workload, WorkloadSpec)
            for name in self.tune.space.server:
                lacking = [s.label for s in self.servers if name not in type(s).model_fields]
                if lacking:
                    raise ValueError(f"tune.space.server.{name}: server '{lacking[0]}' has no such setting")
            if self.tune.objective == "capacity" and self.tune.space.load:
                name = next(iter(self.tune.space.load))
                raise ValueError(f"tune.space.load.{name}: objective 'capacity' searches the load axis itself; fix: "
                                 "tune only server settings (or workload ones)")
            space = self.tune.space.flat()
            for key in self.tune.defaults:
                if key not in space:
                    raise ValueError(f"tune.defaults.{key}: not in tune.space; fix: use one of {', '.join(space)}")
        return self

    def threshold_list(self) -> list[Threshold]:
        out = []
        for metric, text in self.thresholds.items():
            match = _THRESHOLD.match(text)
            assert match is not None
            out.append(Threshold(metric=metric, op=match[1], limit=float(match[2])))  # type: ignore[arg-type]
        return out

    def server(self, label: str) -> ServerSettings:
        for s in self.servers:
            if s.label == label:
                return s
        raise KeyError(label)


def _check_fields(where: str, table: dict[str, Any], model: type[BaseModel]) -> None:
    for name in table:
        if name not in model.model_fields:
            known = ", ".join(sorted(model.model_fields))
            raise ValueError(f"{where}.{name}: no such setting; fix: use one of {known}")


def _check_sweep(sweep: SweepSpec, servers: list[ServerSettings]) -> None:
    _check_fields("sweep.load", sweep.load, LoadSpec)
    _check_fields("sweep.workload", sweep.workload, WorkloadSpec)
    for name in sweep.server:
        lacking = [s.label for s in servers if name not in type(s).model_fields]
        if lacking:
            raise ValueError(
                f"sweep.server.{name}: server '{lacking[0]}' has no such setting; fix: move it to "
                f"[sweep.servers.<label>] for the servers that have it"
            )
    by_label = {s.label: s for s in servers}
    for label, table in sweep.servers.items():
        if label not in by_label:
            raise ValueError(f"sweep.servers.{label}: no server has this label; fix: use one of {', '.join(by_label)}")
        _check_fields(f"sweep.servers.{label}", table, type(by_label[label]))
    tables = [sweep.server, sweep.load, sweep.workload, *sweep.servers.values()]
    for table in tables:
        for name, values in table.items():
            if not values:
                raise ValueError(f"sweep: {name} lists no values; fix: give at least one")
    if sweep.mode == "zip":
        lengths = {len(v) for t in tables for v in t.values()}
        if len(lengths) > 1:
            raise ValueError(f"sweep.mode = 'zip' needs lists of one length (got {sorted(lengths)}); fix: even them")
