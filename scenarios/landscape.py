"""Recorded throughput landscapes, and a replay objective that answers a tuner from them in microseconds.

A landscape maps a point (settings) to a measured throughput, or to None where the point failed (out of memory).
The research's measurements (../shared/landscapes/infpop-a100, one CSV per engine and GPU count: rows are models,
columns batch sizes) load with ``load_infpop``; a sweep recorded by ``hpload run`` loads with
``landscape_from_results``. Replaying them lets tuning strategies be compared in
seconds instead of GPU-days.
"""

from __future__ import annotations

import csv
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path

from hpload.errors import HploadError
from hpload.scenarios.space import ParamSpec, Scalar
from hpload.scenarios.tuning import REPEATS_BEFORE_EXPLORING, Outcome

_INFPOP_FILE = re.compile(r"^(?P<engine>.+)_gpus(?P<gpus>\d+)\.csv$")


@dataclass(frozen=True)
class Landscape:
    """A complete grid: ``axes`` name each setting's values in order; ``points`` hold every measured value."""

    name: str
    axes: dict[str, list[Scalar]]
    points: dict[tuple[Scalar, ...], float | None]  # keyed by values in axes order; None = failed / infeasible

    def value(self, settings: dict[str, Scalar]) -> float | None:
        key = tuple(settings[axis] for axis in self.axes)
        return self.points.get(key)

    @property
    def size(self) -> int:
        return math.prod(len(v) for v in self.axes.values())

    def best(self) -> float | None:
        feasible = [v for v in self.points.values() if v is not None]
        return max(feasible) if feasible else None

    def space(self) -> dict[str, ParamSpec]:
        # Ordered values: the samplers see batch size 32 between 16 and 64 (a log axis, as the grid doubles).
        return {axis: ParamSpec(values=list(values)) for axis, values in self.axes.items()}

    def replay(self, settings: dict[str, Scalar]) -> Outcome:
        value = self.value(settings)
        if value is None:
            return Outcome(value=None, error="failed in the recording (out of memory)")
        return Outcome(value=value)


def _parse_value(text: str) -> float | None:
    text = text.strip()
    if not text or text.lower() == "nan":
        return None
    value = float(text)
    return None if math.isnan(value) else value


def load_infpop(directory: str | Path, engine: str) -> dict[str, Landscape]:
    """One landscape per model for ``engine`` (``vLLM`` or ``autohf``): axes ``batch_size`` x ``gpus``.

    A model missing from one GPU count's file did not run there at all, so those points count as failed.
    """
    root = Path(directory)
    tables: dict[int, dict[str, dict[int, float | None]]] = {}
    batch_sizes: list[int] | None = None
    for path in sorted(root.glob("*.csv")):
        match = _INFPOP_FILE.match(path.name)
        if not match or match["engine"] != engine:
            continue
        with path.open(newline="") as handle:
            rows = list(csv.reader(handle))
        header = [int(c) for c in rows[0][1:]]
        if batch_sizes is not None and header != batch_sizes:
            raise HploadError(f"{path}: batch-size columns differ from the other files of engine {engine}")
        batch_sizes = header
        tables[int(match["gpus"])] = {
            row[0]: {bs: _parse_value(cell) for bs, cell in zip(header, row[1:], strict=True)} for row in rows[1:] if row
        }
    if not tables or batch_sizes is None:
        raise HploadError(f"landscape: no {engine}_gpusN.csv files in {root}; fix: point at infpop-a100/")
    gpu_counts = sorted(tables)
    models = sorted({model for table in tables.values() for model in table})
    out: dict[str, Landscape] = {}
    for model in models:
        points: dict[tuple[Scalar, ...], float | None] = {}
        for bs in batch_sizes:
            for gpus in gpu_counts:
                points[(bs, gpus)] = tables[gpus].get(model, {}).get(bs)
        out[model] = Landscape(
            name=f"{engine}/{model}",
            axes={"batch_size": list(batch_sizes), "gpus": list(gpu_counts)},
            points=points,
        )
    return out


def default_infpop_dir() -> Path:
    """../shared/landscapes/infpop-a100 beside the checkout, where the team keeps the recording."""
    here = Path(__file__).resolve().parent
    for base in (here.parent, *here.parents):
        candidate = base.parent / "shared" / "landscapes" / "infpop-a100"
        if candidate.is_dir():
            return candidate
    raise HploadError("landscape: ../shared/landscapes/infpop-a100 not found; fix: pass --landscape-dir")


def replay_study(
    landscape: Landscape,
    *,
    sampler: str = "tpe",
    seed: int | None = None,
    max_measurements: int | None = None,
    defaults: list[dict[str, Scalar]] | None = None,
    stop_at: float | None = None,
    n_startup_trials: int | None = None,
) -> list[float | None]:
    """Tune against the recording; returns each distinct point's value in the order it was measured.

    Stops after ``max_measurements`` distinct points (default: the whole grid) or once a feasible value reaches
    ``stop_at``. Repeated proposals are answered from memory and cost nothing, as in a live study.
    """
    from hpload.scenarios.tuning import Tuner

    budget = landscape.size if max_measurements is None else min(max_measurements, landscape.size)
    tuner = Tuner(
        landscape.space(),
        sampler=sampler,
        seed=seed,
        study_name=f"replay-{landscape.name}",
        defaults=defaults,
        n_startup_trials=n_startup_trials,
    )
    measured: list[float | None] = []
    rng = random.Random(seed)
    repeats = 0
    # Asks are bounded too, as a safety net: explore() already ends runs of repeated proposals.
    for _ in range(budget * 20):
        if len(measured) >= budget:
            break
        proposal = tuner.ask()
        outcome = tuner.remembered(proposal)
        if outcome is None:
            outcome = landscape.replay(proposal.params)
            measured.append(outcome.value)
            repeats = 0
        else:
            repeats += 1
        tuner.tell(proposal, outcome)
        if repeats >= REPEATS_BEFORE_EXPLORING:
            repeats = 0
            if not tuner.explore(rng):
                break
        if stop_at is not None and outcome.value is not None and outcome.value >= stop_at:
            break
    return measured


def trials_to_reach(measured: list[float | None], target: float, grid_size: int) -> int:
    """How many measurements it took to first reach ``target``; ``grid_size`` when it never did."""
    for index, value in enumerate(measured, start=1):
        if value is not None and value >= target:
            return index
    return grid_size


def landscape_from_results(results_dir: str | Path, objective: str = "output_throughput") -> Landscape:
    """A sweep recorded by ``hpload run`` as a landscape over its swept settings (one server label)."""
    from hpload.scenarios.results import open_results

    store = open_results(results_dir)
    records = store.records()
    labels = sorted({r.label for r in records})
    if len(labels) != 1:
        raise HploadError(f"--replay {results_dir}: holds servers {labels}; fix: record one server per directory")
    axes_values: dict[str, set[Scalar]] = {}
    for r in records:
        for key, value in r.settings.items():
            axes_values.setdefault(key, set()).add(value)
    axes = {k: sorted(v, key=lambda x: (isinstance(x, str), x)) for k, v in axes_values.items() if len(v) > 1}
    if not axes:
        raise HploadError(f"--replay {results_dir}: no swept setting varies; fix: record a sweep first")
    sums: dict[tuple[Scalar, ...], list[float]] = {}
    failed: set[tuple[Scalar, ...]] = set()
    for r in records:
        cell: tuple[Scalar, ...] = tuple(r.settings.get(axis, "") for axis in axes)
        value = r.summary.get(objective)
        if r.ok and isinstance(value, int | float):
            sums.setdefault(cell, []).append(float(value))
        else:
            failed.add(cell)
    points: dict[tuple[Scalar, ...], float | None] = {}
    for cell in sums.keys() | failed:
        values = sums.get(cell)
        points[cell] = sum(values) / len(values) if values else None
    return Landscape(name=f"{Path(results_dir).name}/{labels[0]}", axes={k: list(v) for k, v in axes.items()},
                     points=points)
