"""From a scenario and the setup screen's knobs to a :class:`~hpload.tui.session.RunPlan`. No Textual here.

The knobs are the few settings people change between runs (server kind and a few of its settings, a second
server to compare with, concurrency or rate, max_tokens, duration); everything else comes from the scenario, and
a knob left as the scenario has it changes nothing. The result is validated as a whole scenario, so a typo fails
with the field's name before any process starts.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from hpload.errors import HploadError
from hpload.scenarios.schema import Scenario
from hpload.servers.kinds import KINDS
from hpload.tui.session import RunPlan

SERVER_KINDS = ("echo", *(k for k in KINDS if k != "echo"))  # echo first: it starts at once
QUICKSTART = "quickstart"


@dataclass(frozen=True)
class Knobs:
    """The setup screen's fields. None means "as the scenario says" (e.g. a request count instead of a duration)."""

    server_kind: str
    server_args: str  # "max_num_seqs=64 dtype=float32": fields of the first server, as in a scenario file
    compare_kind: str  # "none", or a second server's kind, measured under the same workload
    concurrency: int | None
    rate: float | None
    max_tokens: int
    duration_s: float | None


@dataclass(frozen=True)
class ScenarioChoice:
    name: str
    path: Path | None  # None: a shipped scenario, found by name


def scenario_choices(search_dir: Path | None = None) -> list[ScenarioChoice]:
    """Shipped scenarios first (quickstart leading), then *.toml files of ./scenarios not shipped."""
    from hpload.scenarios.loader import shipped_names

    names = sorted(shipped_names(), key=lambda n: (n != QUICKSTART, n))
    choices = [ScenarioChoice(n, None) for n in names]
    local = search_dir if search_dir is not None else Path.cwd() / "scenarios"
    if local.is_dir():
        shipped = set(names)
        choices += [ScenarioChoice(p.stem, p) for p in sorted(local.glob("*.toml")) if p.stem not in shipped]
    return choices


def load_plan(choice: ScenarioChoice) -> RunPlan:
    """The scenario as its file says (validated); raises HploadError naming file, line and field."""
    from hpload.scenarios.loader import load_scenario

    sc = load_scenario(str(choice.path) if choice.path else choice.name).scenario
    notes = []
    if sc.tune is not None:
        notes.append(f"tuning: {sc.tune.n_trials} trials per server ({sc.tune.sampler}, maximising "
                     f"{sc.tune.objective}); the points table marks the best feasible trial")
    return RunPlan(scenario=sc, notes=tuple(notes))


def knobs_of(plan: RunPlan) -> Knobs:
    servers = plan.scenario.servers
    return Knobs(
        server_kind=servers[0].kind,
        server_args="",
        compare_kind=servers[1].kind if len(servers) > 1 else "none",
        concurrency=plan.load.concurrency,
        rate=plan.load.rate,
        max_tokens=plan.workload.max_tokens,
        duration_s=plan.load.duration_s,
    )


def parse_server_args(text: str) -> dict[str, Any]:
    """``key=value`` pairs separated by spaces; values read as TOML (``64``, ``true``, ``"auto"``), else text."""
    from hpload.scenarios.loader import parse_value

    out: dict[str, Any] = {}
    for item in shlex.split(text):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise HploadError(f"settings: '{item}' is not key=value; fix: write e.g. max_num_seqs=64")
        out[key.strip()] = parse_value(value.strip())
    return out


def _server_table(kind: str, old: dict[str, Any] | None, label: str) -> dict[str, Any]:
    # Settings carry over only within one kind: vLLM's max_num_seqs means nothing to the echo server.
    if old is not None and old.get("kind", kind) == kind:
        return {**old, "kind": kind}
    return {"kind": kind, "label": label}


def apply_knobs(plan: RunPlan, knobs: Knobs) -> RunPlan:
    """The plan with every changed knob applied, validated as a whole scenario; HploadError names the field."""
    base = knobs_of(plan)
    data = plan.scenario.model_dump(exclude_unset=True)
    servers: list[dict[str, Any]] = [dict(s) for s in data["servers"]]
    if knobs.server_kind != base.server_kind or knobs.server_args.strip():
        servers[0] = _server_table(knobs.server_kind, servers[0], knobs.server_kind)
        servers[0].update(parse_server_args(knobs.server_args))
    if knobs.compare_kind != base.compare_kind:
        if knobs.compare_kind == "none":
            servers = servers[:1]
        else:
            old = servers[1] if len(servers) > 1 else None
            label = knobs.compare_kind
            if label == servers[0].get("label", servers[0]["kind"]):
                label = f"{label}-b"
            servers[1:2] = [_server_table(knobs.compare_kind, old, label)]
    data["servers"] = servers
    load: dict[str, Any] = dict(data.get("load", {}))
    if (knobs.concurrency, knobs.rate) != (base.concurrency, base.rate):
        if (knobs.concurrency is None) == (knobs.rate is None):
            raise HploadError("concurrency/rate: set exactly one; fix: type a concurrency or a rate, clear the other")
        for key in ("concurrency", "rate", "steps", "max_concurrency"):
            load.pop(key, None)
        load["concurrency" if knobs.concurrency is not None else "rate"] = knobs.concurrency or knobs.rate
    if knobs.duration_s != base.duration_s:
        load.pop("num_requests", None)
        load["duration_s"] = knobs.duration_s
    data["load"] = load
    if knobs.max_tokens != base.max_tokens:
        data["workload"] = {**data.get("workload", {}), "max_tokens": knobs.max_tokens}
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"] if not str(p).endswith("Settings"))
        raise HploadError(f"{loc}: {first['msg']}; fix: change that knob") from None
    return replace(plan, scenario=scenario)
