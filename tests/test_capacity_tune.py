"""Tuning server settings for capacity (issue 17): the calibrated (batching) echo server, whose capacity at every
setting the simulator computes independently, and a 3-trial study on the real vLLM CPU server resumed after a kill."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import kill_tree

from hpload.errors import HploadError
from hpload.loadgen.specs import SLO, LoadSpec, WorkloadSpec
from hpload.loadgen.vocabulary import CAPACITY_STUDY_KEYS, CAPACITY_TRIAL_KEYS
from hpload.scenarios.capacity import CapacitySpec
from hpload.scenarios.capacity_sim import true_capacity
from hpload.scenarios.capacity_tune import check_space_supported, load_studies
from hpload.scenarios.schema import Scenario, TuneSpace, TuneSpec
from hpload.scenarios.space import ParamSpec, grid_size
from hpload.scenarios.tune_runner import tune_scenario
from hpload.servers import EchoSettings, VllmSettings
from hpload.servers.echo.batching import BatchingModel

WORKLOAD = WorkloadSpec(input_len=64, max_tokens=16, ignore_eos=True)
SLO_ = SLO(ttft_p99_ms=250, tpot_p99_ms=25)
SPEC = CapacitySpec(start_rate=16, probe_s=3, warmup_s=0.5, precision=0.05, drain_timeout_s=10, replicates=0,
                    coarse_precision=0.25, coarse_probe_fraction=0.5)  # fmt: skip
MAX_BATCH = [2, 4, 8, 16, 32, 64, 128]
STEP_MS = [5.0, 10.0]


def _truth(max_batch: int, step_ms: float) -> float:
    model = BatchingModel(step_ms=step_ms, step_per_seq_ms=0.5, max_batch=max_batch, prefill_ms_per_token=0.02)
    return true_capacity(model, SLO_, SPEC, input_len=WORKLOAD.input_len, max_tokens=WORKLOAD.max_tokens, seed=0)


async def test_tunes_the_calibrated_server_within_5_percent_of_the_best(tmp_path: Path) -> None:
    space = {"max_batch": ParamSpec(values=list(MAX_BATCH)), "step_ms": ParamSpec(values=list(STEP_MS))}
    grid = grid_size(space)
    n_trials = 8
    assert n_trials < grid
    truth = {(b, s): _truth(b, s) for b in MAX_BATCH for s in STEP_MS}
    best_truth = max(truth.values())
    scenario = Scenario(
        name="cap-tune", servers=[EchoSettings(label="echo-b", batching=True, max_batch=16, step_ms=10.0)],
        workload=WORKLOAD, load=LoadSpec(rate=1, duration_s=1), slo=SLO_, capacity=SPEC,
        tune=TuneSpec(objective="capacity", n_trials=n_trials, seed=0, space=TuneSpace(server=space)),
    )  # fmt: skip
    [report] = await tune_scenario(scenario, results_dir=tmp_path)
    assert report.best is not None
    found = report.best[0]
    found_truth = truth[(int(found["server.max_batch"]), float(found["server.step_ms"]))]
    [study] = load_studies(tmp_path)
    print(f"best found {found} (true capacity {found_truth:.1f}, best {best_truth:.1f} of a {grid}-point grid); "
          f"{len(study['trials'])} trials, {study['restarts']} restarts, gain {study['gain_over_default']}")
    assert found_truth >= 0.95 * best_truth, (found, found_truth, best_truth, truth)
    # The defaults (max_batch 16, step 10 ms) were measured first and precisely; the gain is reported.
    first = study["trials"][0]
    assert first["default"] and first["stage"] == "precise"
    assert study["gain_over_default"] is not None and study["gain_over_default"] > 0
    assert study["restarts"] == len(study["trials"]) <= n_trials  # one restart per configuration
    # Poor configurations stop at the coarse search.
    assert any(t["stage"] == "coarse" for t in study["trials"])


async def test_engine_defaults_outside_the_space_are_measured_first(tmp_path: Path) -> None:
    # The server's own max_batch (16) is not a value of the space: the study cannot name it, so it is measured
    # first, outside the sampler, and the gain is reported over it.
    scenario = Scenario(
        name="cap-tune-defaults", servers=[EchoSettings(label="echo-b", batching=True, max_batch=16, step_ms=10.0)],
        workload=WORKLOAD, load=LoadSpec(rate=1, duration_s=1), slo=SLO_, capacity=SPEC,
        tune=TuneSpec(objective="capacity", n_trials=1, seed=0,
                      space=TuneSpace(server={"max_batch": ParamSpec(values=[32])})),
    )  # fmt: skip
    [report] = await tune_scenario(scenario, results_dir=tmp_path)
    [study] = load_studies(tmp_path)
    assert set(study) <= CAPACITY_STUDY_KEYS, set(study) - CAPACITY_STUDY_KEYS
    assert all(set(t) <= CAPACITY_TRIAL_KEYS for t in study["trials"])
    engine, tuned = study["trials"]
    assert engine["default"] and engine["stage"] == "precise" and engine["params"] == {"server.max_batch": "engine default"}
    assert tuned["params"] == {"server.max_batch": 32} and study["restarts"] == 2
    assert report.default_value == engine["capacity_rps"] == study["default_capacity"]
    # The best is whichever measured higher (simulated 62 vs 59 req/s: close), the gain is over the engine's own.
    best = max(engine["capacity_rps"], tuned["capacity_rps"])
    assert study["best"]["capacity_rps"] == best
    assert study["gain_over_default"] == pytest.approx(best / engine["capacity_rps"] - 1)


def test_a_setting_the_installed_vllm_lacks_is_rejected_before_start(monkeypatch: pytest.MonkeyPatch) -> None:
    from hpload.servers import vllm_features

    monkeypatch.setattr(vllm_features, "has_flag", lambda field: field != "async_scheduling")
    with pytest.raises(HploadError, match=r"^tune\.space\.server\.async_scheduling: vLLM \S+ has no --async-sch"):
        check_space_supported(VllmSettings(), {"server.async_scheduling": ParamSpec(choices=[True, False])})
    with pytest.raises(HploadError, match=r"^server vllm\.async_scheduling: "):
        check_space_supported(VllmSettings(async_scheduling=True), {"server.max_num_seqs": ParamSpec(values=[1])})
    check_space_supported(VllmSettings(), {"server.api_server_count": ParamSpec(values=[1, 2])})


def test_vllm_capacity_settings_reach_the_command_line(tiny_model: Path) -> None:
    from hpload.servers import make_server

    settings = VllmSettings(model=str(tiny_model), api_server_count=2, async_scheduling=True,
                            enable_chunked_prefill=False)  # fmt: skip
    argv = make_server(settings).argv(12345)  # type: ignore[attr-defined]
    # Only `vllm serve` runs several API server processes.
    assert argv[1:5] == ["-m", "vllm.entrypoints.cli.main", "serve", str(tiny_model)]
    joined = " ".join(argv)
    for piece in ("--api-server-count 2", "--async-scheduling", "--no-enable-chunked-prefill", "--port 12345"):
        assert piece in joined
    plain = make_server(VllmSettings(model=str(tiny_model))).argv(1)  # type: ignore[attr-defined]
    assert plain[1:3] == ["-m", "vllm.entrypoints.openai.api_server"] and "--async-scheduling" not in plain
    # The flag given as a raw extra argument still gets several API servers (the api_server module would ignore it).
    extra = make_server(VllmSettings(model=str(tiny_model), extra_args=["--api-server-count", "4"])).argv(1)  # type: ignore[attr-defined]
    assert extra[1:4] == ["-m", "vllm.entrypoints.cli.main", "serve"] and extra[-2:] == ["--api-server-count", "4"]


VLLM_SCENARIO = """
name = "cap-tune-vllm"
[[servers]]
kind = "vllm"
label = "vllm"
dtype = "float32"
max_model_len = 256
max_num_seqs = 4          # a value of the space: the defaults trial is the sampler's first (no extra start)
[workload]
input_len = 32
max_tokens = 8
ignore_eos = true
[load]
rate = 1
duration_s = 1
[slo]
ttft_p99_ms = 5000
tpot_p99_ms = 1000
[capacity]
start_rate = 2
max_rate = 8
probe_s = 2
warmup_s = 0.5
precision = 0.5
coarse_precision = 0.9
coarse_probe_fraction = 0.5
replicates = 0
drain_timeout_s = 20
[tune]
objective = "capacity"
n_trials = 3
seed = 0
[tune.space.server.max_num_seqs]
values = [1, 4, 16]
"""


@pytest.mark.slow
def test_vllm_capacity_study_resumes_after_a_kill(tmp_path: Path) -> None:
    scenario = tmp_path / "tune.toml"
    scenario.write_text(VLLM_SCENARIO)
    results = tmp_path / "res"
    cmd = [sys.executable, "-m", "hpload", "tune", str(scenario), "--results", str(results), "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    study_file = results / "tune_capacity" / "vllm.json"
    try:
        deadline = time.monotonic() + 600

        def told() -> int:
            return len(json.loads(study_file.read_text())["trials"]) if study_file.is_file() else 0

        # Kill once the first trial is told and the second has finished a probe (states on disk, not a sleep).
        while told() == 0:
            assert proc.poll() is None, "hpload tune ended before the kill"
            assert time.monotonic() < deadline
            time.sleep(0.2)
        probes = len(list(results.glob("points/*.probe.json")))
        while len(list(results.glob("points/*.probe.json"))) == probes:
            assert proc.poll() is None, "hpload tune ended before the kill"
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        kill_tree(proc)
    before = json.loads(study_file.read_text())
    assert len(before["trials"]) == 1
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr
    [study] = load_studies(results)
    assert len(study["trials"]) == 3, study
    assert study["trials"][0] == before["trials"][0]  # the told trial stayed as it was
    assert study["trials"][0]["default"] and study["trials"][0]["params"] == {"server.max_num_seqs": 4}
    assert all(t["capacity_rps"] is not None and t["capacity_rps"] > 0 for t in study["trials"]), study
    assert study["best"] is not None and study["restarts"] >= 3
    assert "trials" in rerun.stdout and "restarts spent" in rerun.stdout
    report = subprocess.run([sys.executable, "-m", "hpload", "report", str(results)], capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert report.returncode == 0, report.stderr
    md = next(results.rglob("*.md")).read_text()
    assert "Capacity tuning: vllm" in md
