"""Tuning: the Optuna ask/tell core on recorded landscapes, and ``hpload tune`` live on the echo server (SQLite
resume, SIGKILL mid-study, defaults first, SLOs as constraints)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import kill_tree, point_in_progress, wait_s, wait_until

from hpload.scenarios.landscape import Landscape, default_infpop_dir, load_infpop, replay_study, trials_to_reach
from hpload.scenarios.space import ParamSpec
from hpload.scenarios.tuning import Outcome, Tuner

SCENARIO = """\
name = "echo-tune"

[[servers]]
kind = "echo"
ttft_ms = 2
itl_ms = 1

[workload]
input_len = 8
max_tokens = 4

[load]
concurrency = 1
num_requests = 12

[slo]
ttft_p99_ms = 60000

[tune]
sampler = "tpe"
n_trials = 3
seed = 1

[tune.space.server.itl_ms]
values = [1.0, 3.0]

[tune.space.load.concurrency]
values = [1, 2, 4]

[tune.defaults]
"server.itl_ms" = 3.0
"load.concurrency" = 1
"""


def small_landscape() -> Landscape:
    # A peak at (8, 2) and an out-of-memory corner with the highest "value" a careless tuner would love.
    points: dict[tuple[int | float | str | bool, ...], float | None] = {}
    for bs in (1, 2, 4, 8, 16):
        for gpus in (1, 2):
            points[(bs, gpus)] = float(bs * gpus) if bs <= 8 else None
    points[(4, 2)] = 5.0
    return Landscape(name="toy", axes={"batch_size": [1, 2, 4, 8, 16], "gpus": [1, 2]}, points=points)


def test_replay_finds_the_best_feasible_point_and_never_reports_a_failed_one() -> None:
    landscape = small_landscape()
    measured = replay_study(landscape, sampler="tpe", seed=3)
    assert len(measured) == landscape.size  # the whole grid, each point once: repeats were answered from memory
    assert sorted(v for v in measured if v is not None) == sorted(v for v in landscape.points.values() if v is not None)
    tuner = Tuner(landscape.space(), sampler="random", seed=0, study_name="x")
    for _ in range(40):
        proposal = tuner.ask()
        tuner.tell(proposal, tuner.remembered(proposal) or landscape.replay(proposal.params))
    best = tuner.best()
    assert best is not None
    assert best == ({"batch_size": 8, "gpus": 2}, 16.0)


def test_constraints_make_a_point_infeasible() -> None:
    space = {"x": ParamSpec(values=[1, 2, 3])}
    tuner = Tuner(space, sampler="grid", seed=0, study_name="c")
    for _ in range(3):
        proposal = tuner.ask()
        x = int(proposal.params["x"])
        # x = 3 has the most throughput but breaks the latency limit.
        tuner.tell(proposal, Outcome(value=10.0 * x, constraints={"ttft_p99_ms": 0.5 if x == 3 else -0.1}))
    assert tuner.best() == ({"x": 2}, 20.0)


def test_defaults_are_measured_first() -> None:
    landscape = small_landscape()
    tuner = Tuner(landscape.space(), sampler="tpe", seed=0, study_name="d", defaults=[{"batch_size": 16, "gpus": 1}])
    assert tuner.ask().params == {"batch_size": 16, "gpus": 1}


@pytest.mark.parametrize("sampler", ["tpe", "gp", "random", "grid"])
def test_every_sampler_reaches_the_best_of_a_recorded_landscape(sampler: str) -> None:
    landscapes = load_infpop(default_infpop_dir(), "vLLM")
    landscape = landscapes["Phi-2"]
    best = landscape.best()
    assert best is not None
    measured = replay_study(landscape, sampler=sampler, seed=0, stop_at=0.98 * best)
    assert trials_to_reach(measured, 0.98 * best, landscape.size) <= landscape.size
    assert max(v for v in measured if v is not None) >= 0.98 * best


def test_infpop_landscapes_cover_the_grid_with_missing_models_as_failed() -> None:
    vllm = load_infpop(default_infpop_dir(), "vLLM")
    assert len(vllm) == 20
    assert all(ls.size == 44 and len(ls.points) == 44 for ls in vllm.values())
    # Codellama-70b-hf ran only on 8 GPUs: every 1-, 2- and 4-GPU point is infeasible.
    big = vllm["Codellama-70b-hf"]
    assert all(big.value({"batch_size": bs, "gpus": 1}) is None for bs in big.axes["batch_size"])


# ---- live, against the echo server ----


def hpload(*args: str) -> list[str]:
    return [sys.executable, "-m", "hpload", *args]


def complete_trials(db: Path) -> list[tuple[int, str]]:
    with sqlite3.connect(db) as conn:
        return list(conn.execute("SELECT number, state FROM trials ORDER BY number"))


def tune_records(results: Path) -> list[dict[str, object]]:
    return [json.loads(p.read_text()) for p in sorted((results / "points").glob("*.point.json"))]


def test_tune_study_resumes_from_sqlite(tmp_path: Path) -> None:
    scenario = tmp_path / "tune.toml"
    scenario.write_text(SCENARIO)
    results = tmp_path / "res"
    first = subprocess.run(hpload("tune", str(scenario), "--results", str(results), "--quiet"),
                           capture_output=True, text=True, timeout=wait_s(300))
    assert first.returncode == 0, first.stderr
    assert "best feasible output_throughput" in first.stdout
    records = tune_records(results)
    assert len(records) == 3 and all(r["source"] == "tune" for r in records)
    # The defaults were the first trial.
    first_lines = [line for line in first.stderr.splitlines() if line.startswith("trial ")]
    assert "itl_ms=3.0 concurrency=1" in first_lines[0]

    second = subprocess.run(
        hpload("tune", str(scenario), "--results", str(results), "--quiet", "--n-trials", "5"),
        capture_output=True, text=True, timeout=wait_s(300),
    )
    assert second.returncode == 0, second.stderr
    states = [state for _, state in complete_trials(results / "study.db")]
    assert states.count("COMPLETE") >= 5  # repeats of known points are told from memory, not measured
    # Only two new points were measured; the first three stayed as they were.
    assert len(tune_records(results)) == 5
    assert "vs the defaults" in second.stdout


def test_tune_killed_mid_trial_resumes_without_losing_or_repeating(tmp_path: Path) -> None:
    scenario = tmp_path / "tune.toml"
    scenario.write_text(SCENARIO.replace("num_requests = 12", "num_requests = 60").replace("n_trials = 3", "n_trials = 4"))
    results = tmp_path / "res"
    proc = subprocess.Popen(hpload("tune", str(scenario), "--results", str(results), "--quiet"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        # Into a later trial's measurement: one point is on disk and another one is being measured (its
        # in-progress file says so), so the study has a trial asked and not yet told.
        def mid_trial() -> bool:
            assert proc.poll() is None, "hpload tune ended before the kill"
            return bool(list(results.glob("points/*.point.json"))) and point_in_progress(results, measured=0) is not None

        wait_until(mid_trial, 120, "a second trial's measurement", poll_s=0.01)
    finally:
        kill_tree(proc)
    before = {p.name: p.read_bytes() for p in (results / "points").glob("*.point.json")}
    rerun = subprocess.run(hpload("tune", str(scenario), "--results", str(results), "--quiet"),
                           capture_output=True, text=True, timeout=wait_s(300))
    assert rerun.returncode == 0, rerun.stderr
    states = [state for _, state in complete_trials(results / "study.db")]
    assert len(list(results.glob("points/*.point.json"))) == 4
    assert "RUNNING" not in states  # the killed process's open trial was failed and re-queued
    after = {p.name: p.read_bytes() for p in (results / "points").glob("*.point.json")}
    for name, raw in before.items():
        assert after[name] == raw
