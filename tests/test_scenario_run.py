"""``hpload run`` end to end against the echo server: resume after SIGKILL, thresholds' exit code, flags-only runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import kill_tree, wait_s, wait_until

from hpload.loadgen.result import RunResult

SWEEP = """\
name = "echo-resume"

[[servers]]
kind = "echo"
ttft_ms = 5
itl_ms = 1

[workload]
input_len = 16
max_tokens = 8

[load]
concurrency = 1
num_requests = 25

[sweep.load]
concurrency = [1, 2, 3, 4, 5, 6]
"""


def hpload(*args: str) -> list[str]:
    return [sys.executable, "-m", "hpload", *args]


def finished(results: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((results / "points").glob("*.point.json"))}


def test_sigkill_mid_sweep_loses_nothing_and_rerun_resumes(tmp_path: Path) -> None:
    scenario = tmp_path / "sweep.toml"
    scenario.write_text(SWEEP)
    results = tmp_path / "res"
    proc = subprocess.Popen(hpload("run", str(scenario), "--results", str(results), "--quiet"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        def two_points() -> bool:
            assert proc.poll() is None, "hpload run ended before it could be killed mid-sweep"
            return len(finished(results)) >= 2

        wait_until(two_points, 120, "two finished points")
    finally:
        kill_tree(proc)
    before = finished(results)
    assert 2 <= len(before) < 6, "the kill must land mid-sweep"
    # Every point on disk is whole: its record parses and its result loads with histograms.
    for name, raw in before.items():
        record = json.loads(raw)
        assert record["status"] == "ok"
        result = RunResult.load(results / record["result_file"])
        assert result.summary["completed"] == 25
        assert name.startswith(record["point_id"])

    rerun = subprocess.run(hpload("run", str(scenario), "--results", str(results), "--quiet"),
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{len(before)} already there" in rerun.stdout
    assert f"{6 - len(before)} measured" in rerun.stdout
    after = finished(results)
    assert len(after) == 6
    for name, raw in before.items():
        assert after[name] == raw, f"{name} was measured again or rewritten"
    concurrencies = sorted(json.loads(raw)["settings"]["load.concurrency"] for raw in after.values())
    assert concurrencies == [1, 2, 3, 4, 5, 6]


def test_broken_threshold_exits_99_and_keeps_results(tmp_path: Path) -> None:
    scenario = tmp_path / "t.toml"
    scenario.write_text(
        SWEEP.replace("concurrency = [1, 2, 3, 4, 5, 6]", "concurrency = [1, 2]")
        + '\n[thresholds]\np99_ttft_ms = "< 0.001"\ncompleted = ">= 1"\n'
    )
    results = tmp_path / "res"
    proc = subprocess.run(hpload("run", str(scenario), "--results", str(results), "--quiet"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 99, proc.stderr
    broken = [line for line in proc.stderr.splitlines() if "threshold broken" in line]
    assert len(broken) == 2 and all("p99_ttft_ms" in line for line in broken)
    assert len(finished(results)) == 2
    # Thresholds that hold pass: the same results with a loose limit exit 0 without measuring again.
    scenario.write_text(scenario.read_text().replace('"< 0.001"', '"< 60000"'))
    again = subprocess.run(hpload("run", str(scenario), "--results", str(results), "--quiet"),
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "0 measured, 2 already there" in again.stdout


def test_unknown_threshold_metric_is_a_one_line_error(tmp_path: Path) -> None:
    scenario = tmp_path / "t.toml"
    scenario.write_text(SWEEP.replace("[1, 2, 3, 4, 5, 6]", "[1]") + '\n[thresholds]\np99_ttft = "< 5"\n')
    proc = subprocess.run(hpload("run", str(scenario), "--results", str(tmp_path / "r"), "--quiet"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "thresholds.p99_ttft: no such numeric metric" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_flags_alone_run_without_a_scenario(tmp_path: Path) -> None:
    results = tmp_path / "adhoc"
    proc = subprocess.run(
        hpload("run", "--server", "echo", "--concurrency", "3", "--num-requests", "12", "--max-tokens", "4",
               "--results", str(results), "--quiet", "--save-requests"),
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    (record,) = [json.loads(raw) for raw in finished(results).values()]
    assert record["kind"] == "echo"
    assert record["summary"]["completed"] == 12
    assert record["summary"]["total_output_tokens"] == 12 * 4
    assert "output tokens/s" in proc.stdout and str(results) in proc.stdout
    # --save-requests: a line per request, each with its own X-Request-Id and every inter-token gap.
    point = results / "points" / record["point_id"]
    lines = [json.loads(raw) for raw in point.with_suffix(".requests.jsonl").read_text().splitlines()]
    measured = [line for line in lines if not line["warmup"]]
    assert len(measured) == 12 and all(len(line["itl_ms"]) == 3 for line in measured)
    assert len({line["request_id"] for line in lines}) == len(lines)
    # The histograms also land as an HdrHistogram log, one tagged line per metric.
    hlog = point.with_suffix(".hlog").read_text().splitlines()
    assert hlog[0] == "#[Histogram log format version 1.2]"
    assert {line.split(",")[0] for line in hlog[3:]} >= {"Tag=ttft", "Tag=itl", "Tag=e2el"}


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--server", "tgi"], "--server tgi: not a server kind or URL"),
        (["--set", "load.concurrency"], "--set load.concurrency: no '='"),
        (["--set", "load.warp=3", "--server", "echo"], "load.warp: unknown key"),
    ],
)
def test_bad_flags_give_one_line(args: list[str], needle: str, tmp_path: Path) -> None:
    proc = subprocess.run(hpload("run", *args, "--results", str(tmp_path / "r")), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr


def test_server_restarts_only_when_its_settings_change(tmp_path: Path) -> None:
    import asyncio

    from hpload.scenarios.loader import load_text
    from hpload.scenarios.runner import run_scenario

    text = SWEEP.replace("[1, 2, 3, 4, 5, 6]", "[1, 2, 3]").replace("num_requests = 25", "num_requests = 5")
    text += "\n[sweep.server]\nitl_ms = [1.0, 2.0]\n"
    report = asyncio.run(run_scenario(load_text(text, "s.toml"), results_dir=tmp_path / "r"))
    assert report.measured == 6 and report.failed == 0
    # One echo process per server setting (each writes its own log), not one per point.
    assert len(list((tmp_path / "r" / "logs").glob("echo-*.log"))) == 2


def test_workers_flag_spreads_the_client_over_processes(tmp_path: Path) -> None:
    results = tmp_path / "workers"
    proc = subprocess.run(
        hpload("run", "--server", "echo", "--concurrency", "4", "--num-requests", "16", "--max-tokens", "4",
               "--workers", "2", "--results", str(results), "--quiet"),
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    (record,) = [json.loads(raw) for raw in finished(results).values()]
    assert record["summary"]["completed"] == 16
    result = json.loads((results / record["result_file"]).read_text())
    assert result["workers"] == 2  # two client processes ran and their results were merged


def test_a_points_warnings_are_kept_and_printed_even_when_quiet(tmp_path: Path) -> None:
    import io

    from hpload.loadgen.result import RunResult
    from hpload.scenarios.console import ConsoleProgress
    from hpload.scenarios.loader import load_scenario
    from hpload.scenarios.points import expand
    from hpload.scenarios.results import ResultStore
    from hpload.scenarios.runner import make_record

    scenario = load_scenario("quickstart", [], None).scenario
    point = expand(scenario)[0]
    busy = "client may be the bottleneck (CPU 97% of a core): add --workers or lower the load"
    result = RunResult(label=point.label, counters={"completed": 3, "failed": 0})
    result.warnings.append("ttft histogram overflowed 2 times")
    result.health = {"warnings": [busy]}
    store = ResultStore(tmp_path / "r")
    store.prepare({"name": "w"})
    record = store.save(make_record(point, result, None), result)
    (reread,) = store.records()
    assert reread.warnings == ["ttft histogram overflowed 2 times", busy]
    out = io.StringIO()
    ConsoleProgress(out, quiet=True).point_finished(1, 1, record, skipped=False)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and all("warning:" in line for line in lines) and busy in lines[1]


def test_console_says_what_happens_in_the_order_it_happens(tmp_path: Path) -> None:
    """A server starts, is ready, then load runs: the console prints those states in that order (a line a user or a
    test waits on must be true when it appears), and no point is left marked in progress."""
    scenario = tmp_path / "order.toml"
    scenario.write_text(SWEEP.replace("concurrency = [1, 2, 3, 4, 5, 6]", "concurrency = [1, 2]"))
    results = tmp_path / "res"
    done = subprocess.run(hpload("run", str(scenario), "--results", str(results)), capture_output=True, text=True,
                          timeout=wait_s(120))  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()

    def first(text: str, after: int = -1) -> int:
        return next(i for i, line in enumerate(lines) if i > after and text in line)

    starting = first("starting server echo")
    ready = first("echo ready in", starting)
    measuring = first("[1/2] echo concurrency=1: measuring", ready)
    first("[1/2] echo: done", measuring)
    assert not any("measuring" in line for line in lines[:ready]), lines
    # The second point reuses the running server: no second start, straight to measuring.
    assert sum("starting server" in line for line in lines) == 1, lines
    first("[2/2] echo concurrency=2: measuring", measuring)
    assert not list((results / "points").glob("*.progress.json"))
