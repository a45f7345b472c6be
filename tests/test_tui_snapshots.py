"""SVG snapshots of the main screens at 80x24 and 160x48, fed fixed Snapshots so the pictures are stable.

Update after an intended change with ``pytest tests/test_tui_snapshots.py --snapshot-update`` and look at the
report before committing.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot

from hpload.gpu import GpuSample, GpuTelemetry
from hpload.loadgen.snapshot import ClientHealth, HistogramView, MetricSummary, Snapshot
from hpload.tui.app import HploadApp
from hpload.tui.feed import Batch, PointDone, ServerState
from hpload.tui.plans import ScenarioChoice, load_plan
from hpload.tui.run import RunScreen

SCENARIO = """
name = "demo"

[[servers]]
kind = "echo"
label = "fast"
ttft_ms = 20.0
itl_ms = 5.0

[[servers]]
kind = "echo"
label = "slow"
ttft_ms = 80.0
itl_ms = 12.0

[workload]
max_tokens = 64

[load]
concurrency = 8
duration_s = 60
"""


class FixedGpu(GpuTelemetry):
    """Two fixed readings, so the GPU line looks the same on any machine."""

    def sample(self) -> list[GpuSample]:
        return [
            GpuSample(0, "NVIDIA H100 80GB HBM3", 87.0, 61.2 * 1024, 80 * 1024, 512.0),
            GpuSample(1, "NVIDIA H100 80GB HBM3", 85.0, 60.8 * 1024, 80 * 1024, None),
        ]


def hist(center_ms: float, spread: float, n: int) -> HistogramView:
    edges = [0.5 * 1.08**i for i in range(140)]
    raw = [math.exp(-(((math.log(e) - math.log(center_ms)) / spread) ** 2) / 2) for e in edges[:-1]]
    # A small second mode far right: the slow tail the log axis is there to show.
    raw = [r + 0.03 * math.exp(-(((math.log(e) - math.log(center_ms * 6)) / 0.15) ** 2) / 2) for r, e in zip(raw, edges, strict=False)]
    total = sum(raw)
    counts = [round(n * r / total) for r in raw]
    return HistogramView(tuple(edges), tuple(counts), center_ms, center_ms * 1.5, center_ms * 5.5)


def summary(p50: float) -> MetricSummary:
    return MetricSummary(count=100, mean_ms=p50 * 1.1, min_ms=p50 / 3, p50_ms=p50, p90_ms=p50 * 1.5,
                         p99_ms=p50 * 5.5, max_ms=p50 * 9)


def snapshot(label: str, step: int, scale: float, *, bottleneck: bool) -> Snapshot:
    done = 40 * step
    return Snapshot(
        label=label,
        elapsed_s=0.5 * step,
        phase="measure",
        requests_started=done + 8,
        requests_completed=done,
        requests_failed=step // 10,
        in_flight=8,
        output_tokens=done * 64,
        request_rate=80.0 / scale + 12 * math.sin(step / 2.0),
        output_token_rate=(80.0 / scale + 12 * math.sin(step / 2.0)) * 64,
        errors={"timeout": step // 10, "http_5xx": step // 20},
        metrics={m: summary(p * scale) for m, p in (("ttft", 20.0), ("itl", 5.0), ("e2el", 340.0))},
        histograms={
            "ttft": hist(20.0 * scale, 0.25, done),
            "itl": hist(5.0 * scale, 0.12, done * 63),
            "e2el": hist(340.0 * scale, 0.18, done),
        },
        health=ClientHealth(
            cpu_percent=97.0 if bottleneck else 41.0,
            loop_lag_ms=24.0 if bottleneck else 0.8,
            schedule_lag_ms=0.0,
            bottleneck=bottleneck,
            warning="client CPU 97% of a core: add workers" if bottleneck else None,
        ),
    )


def batches(labels: list[str], *, bottleneck: bool, points: bool) -> list[Batch]:
    out = [Batch(events=[ServerState(label, "running", "point 1/1") for label in labels])]
    for step in range(1, 31):
        snaps = {label: snapshot(label, step, 1.0 + 2.5 * i, bottleneck=bottleneck and i == 0)
                 for i, label in enumerate(labels)}
        out.append(Batch(snapshots=snaps))
    # The last line is far wider than any column: it must be cut, not wrapped over the lines above it.
    logs = {label: "\n".join([*(f"INFO 11-27 09:{i:02d}:00 [{label}] 200 OK POST /v1/completions" for i in range(12)),
                              "WARNING\ta very long line " + "x" * 300])
            for label in labels}
    out.append(Batch(logs=logs))
    if points:
        summary_fast: dict[str, Any] = {"request_throughput": 79.8, "output_throughput": 5107.2, "p99_ttft_ms": 110.0,
                                        "p99_tpot_ms": 6.1}
        summary_slow: dict[str, Any] = {"request_throughput": 22.9, "output_throughput": 1465.6,
                                        "p99_ttft_ms": 385.0, "p99_tpot_ms": 15.2}
        out.append(Batch(events=[
            PointDone(1, labels[0], {"load.concurrency": 8}, summary_fast, feasible=True, best=True),
            PointDone(2, labels[-1], {"load.concurrency": 8}, summary_slow, feasible=False,
                      note="ttft_p99_ms 385.0 > 200"),
        ]))
    return out


@pytest.fixture
def demo_path(tmp_path: Path) -> Path:
    path = tmp_path / "demo.toml"
    path.write_text(SCENARIO)
    return path


def make_app(demo_path: Path, theme: str = "textual-dark") -> HploadApp:
    return HploadApp([ScenarioChoice("demo", demo_path)], initial="demo", theme=theme)


def fed_run(demo_path: Path, labels: list[str], *, bottleneck: bool = False, points: bool = False, press: str = ""):  # noqa: ANN201
    async def run_before(pilot: Pilot[int]) -> None:
        app = pilot.app
        assert isinstance(app, HploadApp)
        plan = load_plan(ScenarioChoice("demo", demo_path))
        if len(labels) == 1:
            plan = type(plan)(scenario=plan.scenario.model_copy(update={"servers": plan.scenario.servers[:1]}))
        run = RunScreen(plan, autostart=False, gpu=FixedGpu())
        await app.push_screen(run)
        await pilot.pause()
        for batch in batches(labels, bottleneck=bottleneck, points=points):
            run.apply(batch)
        await app.workers.wait_for_complete()
        if press:
            await pilot.press(*press)
        await pilot.pause()
        await pilot.pause()

    return run_before


def test_setup_80x24(snap_compare: Any, demo_path: Path) -> None:
    assert snap_compare(make_app(demo_path), terminal_size=(80, 24))


def test_help_80x24(snap_compare: Any, demo_path: Path) -> None:
    assert snap_compare(make_app(demo_path), press=["question_mark"], terminal_size=(80, 24))


def test_run_latency_80x24_with_client_warning(snap_compare: Any, demo_path: Path) -> None:
    run_before = fed_run(demo_path, ["fast"], bottleneck=True)
    assert snap_compare(make_app(demo_path), run_before=run_before, terminal_size=(80, 24))


def test_run_rates_view_80x24(snap_compare: Any, demo_path: Path) -> None:
    run_before = fed_run(demo_path, ["fast"], press="2")
    assert snap_compare(make_app(demo_path), run_before=run_before, terminal_size=(80, 24))


def test_run_side_by_side_80x24(snap_compare: Any, demo_path: Path) -> None:
    run_before = fed_run(demo_path, ["fast", "slow"])
    assert snap_compare(make_app(demo_path), run_before=run_before, terminal_size=(80, 24))


def test_run_side_by_side_160x48(snap_compare: Any, demo_path: Path) -> None:
    run_before = fed_run(demo_path, ["fast", "slow"], points=True)
    assert snap_compare(make_app(demo_path), run_before=run_before, terminal_size=(160, 48))


def test_run_single_160x48_light(snap_compare: Any, demo_path: Path) -> None:
    run_before = fed_run(demo_path, ["fast"], bottleneck=True)
    assert snap_compare(make_app(demo_path, "textual-light"), run_before=run_before, terminal_size=(160, 48))
