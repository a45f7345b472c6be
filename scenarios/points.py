"""Expand a scenario into the points it measures: one (server settings, workload, load, repeat) each.

A point's id hashes everything that shapes its measurement, so a rerun of the same scenario finds the points it
already finished and a changed scenario never mistakes an old result for its own. Points are ordered so that those
sharing server settings are adjacent: a server restarts only when its settings change.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from hpload.errors import HploadError
from hpload.loadgen.specs import LoadSpec, WorkloadSpec
from hpload.scenarios.schema import Scenario, SweepSpec
from hpload.servers.kinds import ServerSettings

_SERVER_ADAPTER: TypeAdapter[Any] = TypeAdapter(ServerSettings)


@dataclass(frozen=True)
class Point:
    server: ServerSettings
    workload: WorkloadSpec
    load: LoadSpec
    repeat: int = 0
    settings: dict[str, Any] = field(default_factory=dict)  # the swept/tuned values, "load.concurrency" -> 4

    @property
    def label(self) -> str:
        return self.server.label

    @property
    def server_key(self) -> str:
        return settings_key(self.server)

    @property
    def point_id(self) -> str:
        body = json.dumps(
            {
                "server": self.server.model_dump(mode="json"),
                "workload": self.workload.model_dump(mode="json"),
                "load": self.load.model_dump(mode="json"),
                "repeat": self.repeat,
            },
            sort_keys=True,
        )
        digest = hashlib.sha256(body.encode()).hexdigest()[:10]
        parts = [self.label] + [f"{k.split('.')[-1]}{_slug(v)}" for k, v in sorted(self.settings.items())]
        if self.repeat:
            parts.append(f"r{self.repeat}")
        return "-".join(parts + [digest])


def _slug(value: Any) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", str(value))[:24]


def settings_key(server: BaseModel) -> str:
    """Identity of a server's settings: equal keys share one running server."""
    return json.dumps(server.model_dump(mode="json"), sort_keys=True)


def with_updates(model: BaseModel, updates: dict[str, Any], where: str) -> Any:
    """A validated copy of ``model`` with ``updates``; errors name the sweep/tune field."""
    if not updates:
        return model
    data = model.model_dump()
    data.update(updates)
    try:
        if model.__class__.__name__.endswith("Settings"):
            return _SERVER_ADAPTER.validate_python(data)
        return type(model).model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "value"
        msg = str(first["msg"]).removeprefix("Value error, ")
        raise HploadError(f"{where}: {loc}: {msg}; fix: change that value") from err


def apply_settings(
    base_server: ServerSettings, workload: WorkloadSpec, load: LoadSpec, settings: dict[str, Any], where: str
) -> tuple[ServerSettings, WorkloadSpec, LoadSpec]:
    """Split ``{"server.x": 1, "load.y": 2}`` by table and apply each part to its model."""
    split: dict[str, dict[str, Any]] = {"server": {}, "load": {}, "workload": {}}
    for key, value in settings.items():
        table, _, name = key.partition(".")
        split[table][name] = value
    load_updates = split["load"]
    if "rate" in load_updates and load_updates["rate"] is not None:
        load_updates.setdefault("concurrency", None)  # a rate axis turns a closed-loop base into an open loop
    elif load_updates.get("concurrency") is not None:
        load_updates.setdefault("rate", None)
    return (
        with_updates(base_server, split["server"], where),
        with_updates(workload, split["workload"], where),
        with_updates(load, load_updates, where),
    )


def _axes(sweep: SweepSpec | None, label: str) -> dict[str, list[Any]]:
    if sweep is None:
        return {}
    axes: dict[str, list[Any]] = {}
    for name, values in sweep.server.items():
        axes[f"server.{name}"] = values
    for name, values in sweep.servers.get(label, {}).items():
        axes[f"server.{name}"] = values
    for name, values in sweep.workload.items():
        axes[f"workload.{name}"] = values
    for name, values in sweep.load.items():
        axes[f"load.{name}"] = values
    return axes


def combos(axes: dict[str, list[Any]], mode: str) -> list[dict[str, Any]]:
    if not axes:
        return [{}]
    names = list(axes)
    if mode == "zip":
        return [dict(zip(names, values, strict=True)) for values in zip(*axes.values(), strict=True)]
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*axes.values())]


def expand(scenario: Scenario) -> list[Point]:
    """Every point, grouped so that points with the same server settings run back to back."""
    points: list[Point] = []
    mode = scenario.sweep.mode if scenario.sweep else "cartesian"
    for base in scenario.servers:
        for combo in combos(_axes(scenario.sweep, base.label), mode):
            server, workload, load = apply_settings(
                base, scenario.workload, scenario.load, combo, f"sweep ({base.label})"
            )
            for repeat in range(scenario.repeats):
                seed = scenario.seed + repeat
                points.append(
                    Point(
                        server=server,
                        workload=workload.model_copy(update={"seed": workload.seed + seed}),
                        load=load.model_copy(update={"seed": load.seed + seed}),
                        repeat=repeat,
                        settings=combo,
                    )
                )
    order = {key: i for i, key in enumerate(dict.fromkeys(p.server_key for p in points))}
    points.sort(key=lambda p: order[p.server_key])  # stable: keeps load order within one server setting
    return points
