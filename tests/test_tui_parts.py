"""The TUI's pieces that need no running app: the log axis, the coalescing feed, knobs, GPU telemetry."""

from __future__ import annotations

import math
import threading
from pathlib import Path

import pytest

from hpload.errors import HploadError
from hpload.gpu import NO_GPU, GpuSample, GpuTelemetry, describe
from hpload.loadgen.snapshot import HistogramView, Snapshot
from hpload.tui.feed import Feed, ServerState
from hpload.tui.logaxis import BLOCKS, LogAxis, bar_rows, format_ms, snap_down, snap_up
from hpload.tui.plans import ScenarioChoice, apply_knobs, knobs_of, load_plan, parse_server_args


def view(edges: list[float], counts: list[int]) -> HistogramView:
    return HistogramView(tuple(edges), tuple(counts), p50_ms=edges[1], p90_ms=edges[2], p99_ms=edges[-2])


def log_normal(center_ms: float, n: int = 1000) -> HistogramView:
    edges = [0.1 * 1.1**i for i in range(120)]
    counts = [int(n * math.exp(-((math.log(e) - math.log(center_ms)) / 0.3) ** 2 / 2)) for e in edges[:-1]]
    return HistogramView(tuple(edges), tuple(counts), center_ms, center_ms * 1.4, center_ms * 2)


def test_snap_steps_are_1_2_5() -> None:
    assert snap_down(37.0) == 20.0 and snap_up(37.0) == 50.0
    assert snap_down(0.7) == 0.5 and snap_up(0.7) == 1.0
    assert snap_up(1000.0) == 1000.0 and snap_down(1000.0) == 1000.0


def test_axis_covers_every_view_and_is_shared() -> None:
    fast, slow = log_normal(3.0), log_normal(400.0)
    axis = LogAxis.covering([fast, None, slow])
    assert axis is not None
    for v in (fast, slow):
        filled = [i for i, c in enumerate(v.counts) if c]
        assert axis.lo_ms <= v.edges_ms[filled[0]] and v.edges_ms[filled[-1] + 1] <= axis.hi_ms
    assert LogAxis.covering([None, view([1, 2, 3], [0, 0])]) is None


def test_rebin_keeps_every_sample_and_puts_it_in_order() -> None:
    v = log_normal(20.0)
    axis = LogAxis(1.0, 1000.0)
    for width in (1, 7, 38, 80, 157):
        columns = axis.rebin(v, width)
        assert len(columns) == width
        assert sum(columns) == pytest.approx(sum(v.counts))
    columns = axis.rebin(v, 60)
    peak = max(range(60), key=lambda i: columns[i])
    # 20 ms on a 1 ms..1 s log axis sits at log(20)/log(1000) = 43% of the width.
    assert abs(peak - 0.434 * 60) <= 3


def test_ticks_never_overlap_and_stay_inside() -> None:
    for lo, hi in ((0.5, 2000.0), (1.0, 10.0), (0.001, 1e5), (100.0, 200.0)):
        axis = LogAxis(lo, hi)
        for width in (20, 38, 80, 160):
            ticks = axis.ticks(width)
            assert ticks, (lo, hi, width)
            spans = [(start, start + len(label)) for start, label in ticks]
            for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
                assert start > end
            assert all(0 <= s and e <= width for s, e in spans)
    labels = [label for _, label in LogAxis(1.0, 1000.0).ticks(80)]
    assert labels[0] == "1ms" and "10ms" in labels and labels[-1] == "1s"


def test_bar_rows_fill_from_the_bottom_and_show_any_sample() -> None:
    rows = bar_rows([0.0, 0.001, 0.5, 1.0], 2, 1.0)
    assert rows[1][0] == " " and rows[1][1] == BLOCKS[1]  # a lone sample is still visible
    assert rows[0][3] == "█" and rows[1][3] == "█"
    assert rows[0][2] == " " and rows[1][2] == "█"


def test_format_ms_reads_naturally() -> None:
    assert [format_ms(v) for v in (0.25, 3.456, 45.67, 456.7, 4567.0)] == ["250µs", "3.46ms", "45.7ms", "457ms", "4.57s"]


def snap(label: str, done: int) -> Snapshot:
    return Snapshot(label, 1.0, "measure", done, done, 0, 0, 0, 1.0, 1.0)


def test_feed_wakes_once_until_drained_and_keeps_only_the_latest() -> None:
    wakes: list[int] = []
    feed = Feed(lambda: wakes.append(1))
    threads = [threading.Thread(target=lambda i=i: [feed.snapshot("a", snap("a", i * 100 + k)) for k in range(100)])
               for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    feed.event(ServerState("a", "done"))
    assert len(wakes) == 1 and feed.published == 400
    batch = feed.drain()
    assert list(batch.snapshots) == ["a"] and batch.events == [ServerState("a", "done")]
    assert not feed.drain()
    feed.log("a", "x")
    assert len(wakes) == 2


QUICK = """
name = "knobs"
[[servers]]
kind = "echo"
ttft_ms = 3.0
[workload]
max_tokens = 32
[load]
concurrency = 4
num_requests = 100
"""


def test_knobs_change_only_what_was_touched(tmp_path: Path) -> None:
    path = tmp_path / "knobs.toml"
    path.write_text(QUICK)
    plan = load_plan(ScenarioChoice("knobs", path))
    knobs = knobs_of(plan)
    assert apply_knobs(plan, knobs).scenario == plan.scenario  # untouched knobs change nothing
    from dataclasses import replace

    changed = apply_knobs(plan, replace(knobs, rate=5.0, concurrency=None, duration_s=10.0, compare_kind="echo",
                                        server_args="itl_ms=2.5"))
    sc = changed.scenario
    assert sc.load.rate == 5.0 and sc.load.concurrency is None and sc.load.duration_s == 10.0
    assert sc.load.num_requests is None
    assert [s.label for s in sc.servers] == ["echo", "echo-b"]
    assert sc.servers[0].itl_ms == 2.5 and sc.servers[0].ttft_ms == 3.0  # type: ignore[union-attr]
    with pytest.raises(HploadError, match="concurrency/rate"):
        apply_knobs(plan, replace(knobs, rate=5.0))
    with pytest.raises(HploadError, match="max_tokens"):
        apply_knobs(plan, replace(knobs, max_tokens=0))
    with pytest.raises(HploadError, match="key=value"):
        parse_server_args("max_num_seqs")


def test_gpu_telemetry_says_no_gpu_without_nvml_and_formats_devices() -> None:
    telemetry = GpuTelemetry()
    samples = telemetry.sample()
    if samples:  # a machine with a GPU: real readings
        assert all(0 <= s.util_percent <= 100 and s.mem_total_mib > 0 for s in samples)
    else:
        assert telemetry.unavailable is not None and telemetry.unavailable.startswith(NO_GPU)
        assert describe([], telemetry.unavailable)[0].startswith(NO_GPU)
    telemetry.close()
    line = describe([GpuSample(0, "H100", 87.0, 40 * 1024, 80 * 1024, 412.0)], None)[0]
    assert line.startswith("GPU0  87%") and "40.0/80.0 GiB" in line and "412 W" in line


def test_cli_reports_a_missing_scenario_in_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    for arg in ("no-such-scenario", str(tmp_path / "missing.toml")):
        done = subprocess.run([sys.executable, "-m", "hpload", "tui", arg], capture_output=True, text=True,
                              timeout=60, check=False)
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "fix:" in lines[0] and "Traceback" not in done.stderr
