"""Capacity under an SLO (issue 16): the search against the calibrated (batching) echo server, whose true capacity
the simulator computes independently; capacity 0; a crash mid-probe; SLO errors; the real vLLM CPU server."""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hpload.errors import HploadError
from hpload.loadgen.snapshot import Snapshot
from hpload.loadgen.specs import SLO, WorkloadSpec
from hpload.loadgen.vocabulary import CAPACITY_KEYS, PROBE_KEYS
from hpload.scenarios.capacity import Ask, CapacitySpec, Outcome, Probe, check_slo, parse_slo_overrides, plan
from hpload.scenarios.capacity_run import SearchSettings, find_capacity
from hpload.scenarios.capacity_sim import true_capacity
from hpload.scenarios.results import ResultStore
from hpload.scenarios.runner import ServerKeeper
from hpload.servers import EchoSettings, ExternalSettings
from hpload.servers.echo.batching import BatchingModel

MODEL = BatchingModel(step_ms=10.0, step_per_seq_ms=0.5, max_batch=16, prefill_ms_per_token=0.02)
WORKLOAD = WorkloadSpec(input_len=64, max_tokens=16, ignore_eos=True)


def _echo(**extra: Any) -> EchoSettings:
    fields = {"step_ms": MODEL.step_ms, "step_per_seq_ms": MODEL.step_per_seq_ms, "max_batch": MODEL.max_batch,
              "prefill_ms_per_token": MODEL.prefill_ms_per_token, **extra}  # fmt: skip
    return EchoSettings(label="echo-b", batching=True, **fields)


def _run_plan(passes: Any, spec: CapacitySpec) -> tuple[Outcome, list[Probe]]:
    probes: list[Probe] = []
    for _ in range(80):
        step = plan(probes, spec)
        if isinstance(step, Outcome):
            return step, probes
        assert isinstance(step, Ask)
        ok = passes(step.rate, step.replicate)
        probes.append(Probe(step.rate, step.kind, step.replicate, step.replicate, ok, [] if ok else ["x"]))
    raise AssertionError("no outcome")


def test_plan_brackets_then_narrows_to_the_precision() -> None:
    spec = CapacitySpec(start_rate=1, precision=0.05)
    outcome, probes = _run_plan(lambda r, _: r <= 37.0, spec)
    assert outcome.lo is not None and outcome.hi is not None
    assert outcome.lo <= 37.0 < outcome.hi and outcome.hi / outcome.lo - 1 <= 0.05
    assert outcome.capacity == outcome.lo
    # The capacity rate was probed in full 1 + replicates times; scouts never make the interval's pass.
    assert sum(1 for p in probes if p.rate == outcome.lo and p.kind == "full") == 2
    assert len(probes) < 16


def test_plan_non_monotone_reports_the_knee_below_the_first_failure() -> None:
    # Fails in a window (a cliff) at 28..40 but passes again above, up to 100: the search reports the knee below
    # the first failure it met, and lists the higher rate that passed.
    spec = CapacitySpec(start_rate=1, precision=0.05, scout_fraction=1.0)
    outcome, _ = _run_plan(lambda r, _: not (28 <= r <= 40) and r <= 100, spec)
    assert outcome.hi is not None and 28.0 <= outcome.hi <= 40.0
    assert outcome.lo is not None and outcome.lo < 28.0 and outcome.hi / outcome.lo - 1 <= 0.05
    # A pass above the lowest failure (a resumed search, a replicate) is listed, and never raises the capacity.
    probes = [Probe(10.0, "full", 0, 0, True), Probe(10.0, "full", 1, 1, True), Probe(10.4, "full", 0, 0, False),
              Probe(40.0, "full", 0, 0, True)]  # fmt: skip
    done = plan(probes, CapacitySpec(precision=0.05))
    assert isinstance(done, Outcome) and done.capacity == 10.0 and done.hi == 10.4 and done.non_monotone == [40.0]


def test_plan_replicate_failure_moves_the_capacity_down() -> None:
    # The second arrival seed fails at 30 and above: a tie at a rate is a failure, so lo drops below 30.
    spec = CapacitySpec(start_rate=1, precision=0.05)
    outcome, _ = _run_plan(lambda r, rep: r <= (37.0 if rep == 0 else 30.0), spec)
    assert outcome.lo is not None and outcome.lo <= 30.0


def test_slo_errors_name_the_field() -> None:
    with pytest.raises(HploadError, match=r"^slo: a capacity search needs"):
        check_slo(SLO())
    with pytest.raises(HploadError, match=r"^slo\.ttft_p50_ms: "):
        check_slo(SLO(ttft_p50_ms=900, ttft_p99_ms=500))
    with pytest.raises(HploadError, match=r"^slo\.min_good_fraction: "):
        check_slo(SLO(min_good_fraction=0.99))
    with pytest.raises(HploadError, match=r"^slo\.e2el_ms: "):
        check_slo(SLO(ttft_ms=500, e2el_ms=100, min_good_fraction=0.9))
    with pytest.raises(HploadError, match=r"^--slo ttft_p99_ms: 'fast' is not a number"):
        parse_slo_overrides(SLO(), ["ttft_p99_ms=fast"])
    with pytest.raises(HploadError, match=r"^--slo nope=1: "):
        parse_slo_overrides(SLO(), ["nope=1"])
    with pytest.raises(HploadError, match=r"^--slo tpot_p99_ms: "):
        parse_slo_overrides(SLO(), ["tpot_p99_ms=-3"])
    assert parse_slo_overrides(SLO(ttft_p99_ms=1), ["ttft_p99_ms=250"]).ttft_p99_ms == 250


def test_cli_contradictory_slo_is_one_line(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "hpload", "capacity", "--results", str(tmp_path), "--slo", "tpot_p50_ms=90",
         "--slo", "tpot_p99_ms=10"], capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("hpload capacity: error: slo.tpot_p50_ms: ")
    assert "Traceback" not in out.stderr


def _settings(spec: CapacitySpec, slo: SLO, seed: int = 0, **extra: Any) -> SearchSettings:
    return SearchSettings(workload=WORKLOAD, slo=slo, spec=spec, seed=seed, **extra)


SPEC = CapacitySpec(start_rate=16, probe_s=3, warmup_s=0.5, precision=0.1, drain_timeout_s=10)
SLO_TTFT = SLO(ttft_p99_ms=250, tpot_p99_ms=25)


async def test_found_interval_holds_the_simulated_truth(tmp_path: Path) -> None:
    held, ratios = [], []
    for seed in range(3):
        store = ResultStore(tmp_path / f"s{seed}")
        record = await find_capacity(_echo(), _settings(SPEC, SLO_TTFT, seed), store)
        truth = true_capacity(MODEL, SLO_TTFT, SPEC, input_len=WORKLOAD.input_len, max_tokens=WORKLOAD.max_tokens,
                              seed=seed)  # fmt: skip
        lo, hi = record["interval"]["lo"], record["interval"]["hi"]
        assert lo is not None and hi is not None, record["reason"]
        # The real server adds the client's and the loop's few milliseconds to every latency: a 2% margin.
        held.append(lo * 0.98 <= truth <= hi * 1.02)
        ratios.append(record["capacity_rps"] / truth)
        print(f"seed {seed}: truth {truth:.2f}, interval [{lo}, {hi}), {len(record['probes'])} probes")
        assert record["probes"] and (tmp_path / f"s{seed}" / "capacity" / "echo-b.json").is_file()
    assert sum(held) >= 2, (held, ratios)
    assert abs(statistics.median(ratios) - 1) < 0.1, ratios


async def test_rerun_continues_from_the_probes_on_disk(tmp_path: Path) -> None:
    spec = SPEC.model_copy(update={"precision": 0.2, "replicates": 0})
    store = ResultStore(tmp_path)
    first = await find_capacity(_echo(), _settings(spec, SLO_TTFT), store)
    seen: list[Probe] = []
    again = await find_capacity(_echo(), _settings(spec, SLO_TTFT, on_probe=lambda _l, p: seen.append(p)), store)
    assert seen == []  # nothing probed again
    assert again["capacity_rps"] == first["capacity_rps"] and len(again["probes"]) == len(first["probes"])
    assert set(first) <= CAPACITY_KEYS, set(first) - CAPACITY_KEYS
    assert all(set(p) <= PROBE_KEYS for p in first["probes"])


def test_goodput_fraction_is_judged_by_the_one_slo_evaluator() -> None:
    from hpload.loadgen.slo import violations
    from hpload.scenarios.capacity import judge

    slo = SLO(ttft_ms=100, min_good_fraction=0.99)
    summary = {"completed": 95, "failed": 0, "incomplete": 5, "good_fraction": 0.95}
    assert judge(summary, slo, SPEC) == violations(slo, summary) == ["min_good_fraction 0.950 < 0.99"]
    assert judge({**summary, "good_fraction": 0.995}, slo, SPEC) == []


async def test_capacity_zero_with_the_reason(tmp_path: Path) -> None:
    spec = CapacitySpec(start_rate=2, min_rate=1, probe_s=3, warmup_s=0.5)
    slow = _echo(step_ms=200.0)  # every first token takes 200 ms at least
    record = await find_capacity(slow, _settings(spec, SLO(ttft_p99_ms=50)), ResultStore(tmp_path))
    assert record["capacity_rps"] == 0.0
    assert record["reason"].startswith("meets the SLO at no rate") and "ttft_p99_ms" in record["reason"]
    assert record["interval"]["lo"] is None and all(not p["passed"] for p in record["probes"])


@pytest.mark.parametrize("on_failure", ["continue", "stop"])
async def test_server_crash_mid_probe(tmp_path: Path, on_failure: str) -> None:
    keeper = ServerKeeper(workdir=tmp_path / "logs")
    killed: list[int] = []
    probes_done: list[Probe] = []

    def observer(snap: Snapshot) -> None:
        # Kill the server once, in the measured phase of the second probe.
        server = keeper._server
        if not killed and len(probes_done) == 1 and snap.phase == "measure" and server is not None:
            pid = server.pids()[0]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    spec = SPEC.model_copy(update={"precision": 0.2, "replicates": 0})
    settings = _settings(spec, SLO_TTFT, on_failure=on_failure, observer=observer,
                         on_probe=lambda _l, p: probes_done.append(p))  # fmt: skip
    try:
        record = await find_capacity(_echo(), settings, ResultStore(tmp_path), keeper)
    finally:
        await keeper.close()
    assert killed
    crashed = [p for p in record["probes"] if p["error"]]
    assert len(crashed) == 1 and not crashed[0]["passed"] and record["server_crashes"]
    if on_failure == "stop":
        assert record["reason"].startswith("stopped") and len(record["probes"]) == 2
    else:
        assert len(record["probes"]) > 2 and record["capacity_rps"] > 0  # the server restarted and the search went on


@pytest.mark.slow
async def test_capacity_of_vllm_cpu_tiny_model(vllm_server: Any, tmp_path: Path) -> None:
    server = ExternalSettings(label="vllm", url=vllm_server.base_url, model=vllm_server.model)
    spec = CapacitySpec(start_rate=1, max_rate=16, probe_s=3, warmup_s=1, precision=0.3, replicates=0,
                        drain_timeout_s=20)  # fmt: skip
    workload = WorkloadSpec(input_len=32, max_tokens=16, ignore_eos=True)
    settings = SearchSettings(workload=workload, slo=SLO(ttft_p99_ms=5000, tpot_p99_ms=1000), spec=spec)
    record = await find_capacity(server, settings, ResultStore(tmp_path))
    assert record["capacity_rps"] > 0, record["reason"]
    assert record["interval"]["lo"] == record["capacity_rps"]
    assert record["output_tok_s"] > 0 and record["latency_at_capacity"]["p99_ttft_ms"] is not None
    assert record["versions"]["vllm"]


def test_tui_curve_text_marks_slo_and_capacity() -> None:
    from hpload.tui.capacity import curve_text

    text = curve_text([(10.0, 100.0, True), (20.0, 300.0, True), (30.0, 900.0, False)], 500.0, 20.0)
    lines = text.splitlines()
    assert any("-" * 10 in line for line in lines)  # the SLO line
    assert "x" in lines[0] or "x" in lines[1]  # the failed probe is the highest point
    assert sum(line.count("o") for line in lines[:12]) == 2
    assert sum("|" in line for line in lines[:12]) == 11  # the capacity's column (one cell holds the probe there)


async def test_tui_shows_probes_as_they_come(tmp_path: Path) -> None:
    from hpload.scenarios.schema import Scenario
    from hpload.tui.capacity import CapacityApp

    scenario = Scenario.model_validate({
        "name": "cap", "servers": [_echo().model_dump()], "workload": WORKLOAD.model_dump(),
        "load": {"rate": 1.0, "duration_s": 1}, "slo": {"ttft_p99_ms": 250, "tpot_p99_ms": 25},
        "capacity": {"start_rate": 8, "probe_s": 3, "warmup_s": 0.5, "precision": 0.3, "replicates": 0},
    })  # fmt: skip
    app = CapacityApp(scenario, tmp_path, [])
    async with app.run_test() as pilot:
        for _ in range(900):
            if app.records or app.error:
                break
            await pilot.pause(0.2)
        from textual.widgets import DataTable

        assert app.error is None and app.records
        assert app.query_one(DataTable).row_count == len(app.records[0]["probes"]) >= 2
        assert "offered rate" in str(app.query_one("#curve").render())
        assert app.sub_title == scenario.workload.describe() and app.sub_title.startswith("input ")


async def test_batching_echo_follows_the_step_model(tmp_path: Path) -> None:
    from hpload.loadgen import run_load
    from hpload.loadgen.prom import scrape
    from hpload.loadgen.specs import LoadSpec, Target
    from hpload.servers import make_server

    # Alone in the batch: TTFT = one step with the prompt's prefill, TPOT = one step of batch 1.
    model = BatchingModel(step_ms=20.0, step_per_seq_ms=2.0, max_batch=2, prefill_ms_per_token=0.1)
    settings = EchoSettings(batching=True, step_ms=model.step_ms, step_per_seq_ms=model.step_per_seq_ms,
                            max_batch=model.max_batch, prefill_ms_per_token=model.prefill_ms_per_token)  # fmt: skip
    async with make_server(settings, workdir=tmp_path) as server:
        target = Target(base_url=server.base_url, model=server.model)
        workload = WorkloadSpec(input_len=100, max_tokens=5, ignore_eos=True)
        alone = await run_load(target, workload, LoadSpec(concurrency=1, num_requests=6))
        s = alone.summary
        assert abs(s["median_ttft_ms"] - (20 + 2 + 0.1 * 100)) < 4, s["median_ttft_ms"]
        assert abs(s["median_tpot_ms"] - 22) < 3, s["median_tpot_ms"]
        # Three at once with max_batch 2: the third waits for a free slot, so its TTFT is about a whole request.
        crowd = await run_load(target, workload, LoadSpec(concurrency=3, num_requests=3))
        assert crowd.summary["max_ttft_ms"] > 5 * 22
        gauges = await scrape(server.base_url + "/metrics")
        assert gauges is not None and "echo:num_requests_running" in gauges and "echo:num_steps_total" in gauges
