"""``hpload report`` and ``hpload compare`` on results recorded from real echo servers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hpload.loadgen.result import RunResult
from hpload.scenarios.compare import Column, columns_from, compare_table, delta
from hpload.scenarios.loader import load_text
from hpload.scenarios.report import cdf_points, landscape_axes, pareto_front, write_report
from hpload.scenarios.results import ResultStore
from hpload.scenarios.runner import run_scenario

SCENARIO = """\
name = "echo-report"
description = "two echo servers, a 2x2 grid"

[[servers]]
kind = "echo"
label = "fast"
ttft_ms = 2
itl_ms = 1

[[servers]]
kind = "echo"
label = "slow"
ttft_ms = 20
itl_ms = 4

[workload]
input_len = 8
max_tokens = 6

[load]
concurrency = 1
num_requests = 12

[sweep.load]
concurrency = [1, 3]

[sweep.workload]
max_tokens = [4, 8]
"""

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import asyncio

    out = tmp_path_factory.mktemp("report") / "res"
    report = asyncio.run(run_scenario(load_text(SCENARIO, "report.toml"), results_dir=out))
    assert report.measured == 8 and report.failed == 0
    return out


def test_report_writes_markdown_and_pngs(results: Path) -> None:
    files = write_report(results)
    names = sorted(p.name for p in files.plots)
    assert names == ["landscape-fast.png", "landscape-slow.png", "latency-cdf.png", "pareto.png"]
    for path in files.plots:
        data = path.read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 10_000, path
    text = files.markdown.read_text()
    assert text.startswith("# hpload report: echo-report")
    for path in files.plots:
        assert f"(report/{path.name})" in text
    # All points are listed; the best-per-server table compares fast against slow.
    all_points = text.split("## All points")[1]
    assert all_points.count("| fast |") == 4 and all_points.count("| slow |") == 4
    assert "slow" in text.split("## Best point per server")[1].split("\n")[2]


def test_report_cli_prints_where_files_went(results: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "hpload", "report", str(results)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"report: {results}/report.md" in proc.stdout
    assert proc.stdout.count("plot:") == 4


def test_report_of_a_non_results_directory_is_a_one_line_error(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "hpload", "report", str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert "not a results directory" in proc.stderr and "Traceback" not in proc.stderr


def test_cdf_comes_from_the_saved_histograms(results: Path) -> None:
    store = ResultStore(results)
    record = next(r for r in store.records() if r.label == "slow")
    result: RunResult = store.load_result(record)
    xs, ys = cdf_points(result.histograms["ttft"])
    assert xs == sorted(xs) and ys == sorted(ys)
    assert ys[-1] == pytest.approx(1.0)
    # The slow echo server waits 20 ms before its first token: no TTFT sample can be below that.
    assert xs[0] >= 19.0
    assert xs[-1] == pytest.approx(result.summary["max_ttft_ms"], rel=0.01)


def test_landscape_axes_pick_the_varying_settings(results: Path) -> None:
    records = [r for r in ResultStore(results).records() if r.label == "fast"]
    assert sorted(landscape_axes(records)) == ["load.concurrency", "workload.max_tokens"]


def test_pareto_front_keeps_only_undominated_points() -> None:
    points = [(10.0, 100.0), (20.0, 90.0), (15.0, 150.0), (30.0, 200.0), (25.0, 140.0)]
    assert pareto_front(points) == [(10.0, 100.0), (15.0, 150.0), (30.0, 200.0)]


def test_compare_puts_servers_side_by_side_with_deltas(results: Path) -> None:
    columns = columns_from(str(results))
    assert len(columns) == 8
    fast = next(c for c in columns if c.name.startswith("fast") and "concurrency=3" in c.name and "max_tokens=8" in c.name)
    slow = next(c for c in columns if c.name.startswith("slow") and "concurrency=3" in c.name and "max_tokens=8" in c.name)
    table = compare_table([fast, slow])
    ttft_row = next(line for line in table.splitlines() if line.startswith("ttft p50"))
    assert "worse" in ttft_row  # 20 ms against 2 ms to first token
    thr_row = next(line for line in table.splitlines() if line.startswith("output tokens/s"))
    assert "worse" in thr_row
    point_file = next(results.glob("points/slow-*.point.json"))
    result_file = point_file.with_name(point_file.name.replace(".point.json", ".json"))
    (by_record,) = columns_from(str(point_file))
    (by_result,) = columns_from(str(result_file))
    assert by_record.name == by_result.name and by_record.name.startswith("slow ")


def test_delta_direction() -> None:
    assert delta(100.0, 150.0, True) == "(+50.0% better)"
    assert delta(100.0, 150.0, False) == "(+50.0% worse)"
    assert delta(10.0, 10.0, True) == "(=)"
    md = compare_table([Column("a", {"output_throughput": 10.0}), Column("b", {"output_throughput": 5.0})],
                       markdown=True)
    assert md.splitlines()[2] == "| output tokens/s | 10.00 | 5.00 (-50.0% worse) |"


def test_zipped_settings_make_one_landscape_axis() -> None:
    from hpload.scenarios.report import landscape_axes
    from hpload.scenarios.results import PointRecord

    def rec(conc: int, batch: int, seqs: int) -> PointRecord:
        settings = {"load.concurrency": conc, "server.batch_size": batch, "server.max_num_seqs": seqs}
        return PointRecord(point_id=f"p{conc}-{seqs}", label="hf", kind="hf", status="ok", settings=settings)

    zipped = [rec(c, c, 64) for c in (1, 8, 32)]
    assert landscape_axes(zipped) == ["load.concurrency"]  # batch_size moves with concurrency: one axis
    grid = [rec(c, c, s) for c in (1, 8, 32) for s in (64, 128)]
    assert landscape_axes(grid) == ["load.concurrency", "server.max_num_seqs"]
