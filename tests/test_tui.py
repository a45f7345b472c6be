"""The TUI driven through Textual's Pilot against the real echo server, started by the real scenario runner."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from textual.pilot import Pilot
from textual.widgets import Input, Static

from hpload.tui.app import HploadApp
from hpload.tui.help import HelpScreen, binding_rows
from hpload.tui.histogram import HistogramChart
from hpload.tui.panels import LogTail, PointsTable, ServerPanel
from hpload.tui.plans import ScenarioChoice
from hpload.tui.run import RunScreen
from hpload.tui.setup import SetupScreen

ECHO_SCENARIO = """
name = "tui-echo"

[[servers]]
kind = "echo"
label = "{label}"
ttft_ms = 5.0
itl_ms = 1.0

{extra_server}

[workload]
input_len = 16
num_prompts = 20
max_tokens = 16

[load]
concurrency = 4
duration_s = {duration_s}
"""


def write_scenario(tmp_path: Path, *, duration_s: float = 120, second: str = "") -> Path:
    path = tmp_path / "tui-echo.toml"
    path.write_text(ECHO_SCENARIO.format(label="echo", extra_server=second, duration_s=duration_s))
    return path


def spawned_children(before: set[int]) -> list[psutil.Process]:
    """Processes below this one that were not there before, except multiprocessing's own resource tracker
    (started with the first spawned process; it holds no server and exits with this interpreter)."""
    out = []
    for proc in psutil.Process().children(recursive=True):
        if proc.pid in before:
            continue
        try:
            if "resource_tracker" in " ".join(proc.cmdline()) or proc.status() == psutil.STATUS_ZOMBIE:
                continue
        except psutil.NoSuchProcess:
            continue
        out.append(proc)
    return out


async def wait_for(pilot: Pilot[int], condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        await pilot.pause(0.2)


def hist_samples(panel: ServerPanel, metric: str) -> int:
    view = panel.histogram(metric).view
    return 0 if view is None else sum(view.counts)


def text_of(screen: RunScreen, selector: str) -> str:
    return str(screen.query_one(selector, Static).content)


async def test_setup_start_live_update_stop_leaves_no_process(tmp_path: Path) -> None:
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    path = write_scenario(tmp_path)
    app = HploadApp([ScenarioChoice("tui-echo", path)], initial="tui-echo", results_root=tmp_path / "results")
    async with app.run_test(size=(100, 30)) as pilot:
        setup = app.screen
        assert isinstance(setup, SetupScreen)
        setup.query_one("#concurrency", Input).value = "2"  # a knob changed before starting
        await pilot.pause()
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen), 5, "the run screen")
        run = app.screen
        assert isinstance(run, RunScreen)
        assert run.plan.load.concurrency == 2
        panel = run.panels()[0]

        await wait_for(pilot, lambda: hist_samples(panel, "ttft") > 0, 90, "the first ttft samples")
        first_ttft, first_e2el = hist_samples(panel, "ttft"), hist_samples(panel, "e2el")
        assert panel.snapshot is not None
        first_done = panel.snapshot.requests_completed
        assert "running" in text_of(run, "#runbar")
        await wait_for(pilot, lambda: hist_samples(panel, "ttft") > first_ttft + 20, 30, "more samples")
        assert hist_samples(panel, "e2el") > first_e2el
        assert panel.snapshot.requests_completed > first_done
        assert panel.histogram("itl").axis is not None
        # The echo server answers in ~5 ms + 15 x 1 ms: the ttft percentiles must sit in that decade.
        ttft = panel.histogram("ttft").view
        assert ttft is not None and 1.0 < ttft.p50_ms < 200.0
        assert len(panel.req_rate.values) >= 2 and max(panel.req_rate.values) > 0
        await wait_for(pilot, lambda: bool(panel.query_one(".log-view", LogTail).lines), 10, "the server's log")

        await pilot.press("s")
        await wait_for(pilot, lambda: not run.running, 60, "the engine to stop")
        await pilot.pause(0.3)
        assert run.outcome is not None and run.outcome.state == "stopped"
        assert "stopped" in text_of(run, "#runbar")
        assert spawned_children(before) == [], "a server or engine process outlived the stop"
        frozen = hist_samples(panel, "ttft")
        await pilot.pause(1.0)
        assert hist_samples(panel, "ttft") == frozen  # nothing runs any more

        # r starts the same plan afresh: the columns reset, then fill again.
        await pilot.press("r")
        await wait_for(pilot, lambda: run.running, 5, "the restart")
        assert hist_samples(panel, "ttft") < frozen
        await wait_for(pilot, lambda: hist_samples(panel, "ttft") > 0, 90, "samples after the restart")
        # esc goes back to the setup screen, stopping the run on the way.
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, SetupScreen), 60, "the setup screen")
        assert not run.running
        assert spawned_children(before) == []


async def test_two_servers_side_by_side_share_axes(tmp_path: Path) -> None:
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    second = '[[servers]]\nkind = "echo"\nlabel = "slow"\nttft_ms = 40.0\nitl_ms = 4.0\n'
    path = write_scenario(tmp_path, duration_s=3, second=second)
    app = HploadApp(
        [ScenarioChoice("tui-echo", path)], initial="tui-echo", results_root=tmp_path / "results"
    )
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.press("f5")
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen), 5, "the run screen")
        run = app.screen
        assert isinstance(run, RunScreen)
        fast, slow = run.panels()
        assert (fast.label, slow.label) == ("echo", "slow")
        await wait_for(pilot, lambda: not run.running and run.session is not None, 120, "both servers to finish")
        await pilot.pause(0.5)
        assert run.outcome is not None and run.outcome.state == "done", run.outcome
        assert fast.state == slow.state == "done"
        for metric in ("ttft", "itl", "e2el"):
            a, b = fast.histogram(metric), slow.histogram(metric)
            assert a.axis is not None and a.axis == b.axis, metric  # one axis per metric for both columns
            assert a.peers == b.peers and len(a.peers) == 2
            width = a.content_size.width
            assert a.scale_share(width) == b.scale_share(width) > 0
        assert slow.histogram("ttft").view.p50_ms > fast.histogram("ttft").view.p50_ms  # type: ignore[union-attr]
        # Each finished point is listed, and one (the faster) is marked best.
        table = run.query_one("#points")
        assert table.row_count == 2
        assert run.has_class("has-points")
        assert spawned_children(before) == []


async def test_quit_during_a_run_stops_everything(tmp_path: Path) -> None:
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    path = write_scenario(tmp_path)
    app = HploadApp([ScenarioChoice("tui-echo", path)], initial="tui-echo", results_root=tmp_path / "results")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen), 5, "the run screen")
        run = app.screen
        assert isinstance(run, RunScreen)
        await wait_for(pilot, lambda: run.panels()[0].snapshot is not None, 90, "the first snapshot")
        await pilot.press("q")
        await wait_for(pilot, lambda: not run.running, 60, "the engine to stop")
    await asyncio.sleep(0.2)
    assert spawned_children(before) == []


async def test_help_lists_every_key_and_views_switch(tmp_path: Path) -> None:
    path = write_scenario(tmp_path)
    app = HploadApp([ScenarioChoice("tui-echo", path)], initial="tui-echo", results_root=tmp_path / "results")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("question_mark")
        await pilot.pause()
        help_screen = app.screen
        assert isinstance(help_screen, HelpScreen)
        shown = "\n".join(str(s.content) for s in help_screen.query(Static))
        for _, bindings in app.help_sections():
            for key, description in binding_rows(bindings):
                assert key in shown and description in shown, (key, description)
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, SetupScreen)

        run = app.run_screen(app.screen.resolved_plan(), autostart=False)
        await app.push_screen(run)
        await pilot.pause()
        latency = run.panels()[0].query_one(".latency-view")
        rates = run.panels()[0].query_one(".rate-view")
        assert latency.display and not rates.display
        await pilot.press("2")
        await pilot.pause()
        assert rates.display and not latency.display
        await pilot.press("t")
        assert app.theme == "textual-light"
        await pilot.resize_terminal(160, 48)
        await pilot.pause()
        assert latency.display and rates.display  # wide and tall: every view at once
        await pilot.resize_terminal(80, 24)
        await pilot.pause()
        assert rates.display and not latency.display


async def test_setup_reports_a_bad_knob_and_does_not_start(tmp_path: Path) -> None:
    path = write_scenario(tmp_path)
    app = HploadApp([ScenarioChoice("tui-echo", path)], initial="tui-echo", results_root=tmp_path / "results")
    async with app.run_test(size=(80, 24)) as pilot:
        setup = app.screen
        assert isinstance(setup, SetupScreen)
        setup.query_one("#server-args", Input).value = "ttft_msec=5"
        await pilot.pause()
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert isinstance(app.screen, SetupScreen)
        error = str(setup.query_one("#setup-error", Static).content)
        assert "ttft_msec" in error and "fix" in error


@pytest.mark.parametrize("engine", ["thread"])
async def test_thread_engine_also_runs(tmp_path: Path, engine: str) -> None:
    path = write_scenario(tmp_path, duration_s=2)
    app = HploadApp(
        [ScenarioChoice("tui-echo", path)], initial="tui-echo", results_root=tmp_path / "results", run_in=engine
    )
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen), 5, "the run screen")
        run = app.screen
        assert isinstance(run, RunScreen)
        await wait_for(pilot, lambda: run.session is not None and not run.running, 90, "the run to finish")
        await pilot.pause(0.3)
        assert run.outcome is not None and run.outcome.state == "done"
        assert hist_samples(run.panels()[0], "e2el") > 0
        assert isinstance(run.panels()[0].histogram("ttft"), HistogramChart)


async def test_a_server_that_cannot_start_shows_as_failed(tmp_path: Path) -> None:
    path = tmp_path / "dead.toml"
    # Nothing listens on port 9 of loopback: the attach fails, the run goes on and says so in the column.
    path.write_text(
        'name = "dead"\n[[servers]]\nkind = "external"\nlabel = "nobody"\nurl = "http://127.0.0.1:9"\n'
        "startup_timeout_s = 2\n[load]\nconcurrency = 1\nduration_s = 2\n"
    )
    app = HploadApp([ScenarioChoice("dead", path)], initial="dead", results_root=tmp_path / "results")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen), 5, "the run screen")
        run = app.screen
        assert isinstance(run, RunScreen)
        await wait_for(pilot, lambda: run.session is not None and not run.running, 60, "the run to end")
        await pilot.pause(0.3)
        panel = run.panels()[0]
        assert panel.state == "failed", (panel.state, panel.detail)
        assert "no request succeeded" in panel.detail or "nobody" in panel.detail, panel.detail
        assert "failed" in str(panel.query_one(".panel-head", Static).content)
        if panel.snapshot is not None:  # the attach worked and every request failed: the errors say how
            assert panel.snapshot.requests_failed > 0
            assert "errors  none" not in str(panel.query_one(".errors", Static).content)


TUNE = """
name = "tui-tune"
[[servers]]
kind = "echo"
ttft_ms = 2.0
itl_ms = 0.5
[workload]
input_len = 16
num_prompts = 20
max_tokens = 8
[load]
concurrency = 1
duration_s = 1.5
[slo]
ttft_p99_ms = 10000
[tune]
sampler = "grid"
n_trials = 3
objective = "output_throughput"
[tune.space.load]
concurrency = { values = [1, 2, 4] }
"""


async def test_tuning_study_fills_the_points_table_and_marks_the_best(tmp_path: Path) -> None:
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    path = tmp_path / "tui-tune.toml"
    path.write_text(TUNE)
    app = HploadApp([ScenarioChoice("tui-tune", path)], initial="tui-tune", results_root=tmp_path / "results")
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen), 5, "the run screen")
        run = app.screen
        assert isinstance(run, RunScreen)
        await wait_for(pilot, lambda: run.session is not None and not run.running, 120, "the study to finish")
        await pilot.pause(0.3)
        assert run.outcome is not None and run.outcome.state == "done", run.outcome
        table = run.query_one(PointsTable)
        assert table.row_count >= 3  # every trial the tuner reports, re-proposed known points included
        assert table.display  # wide and tall: the table shows beside the live views
        stars = [row for row in table.rows if table.get_cell(row, "best") == "★"]
        assert len(stars) == 1
        settings = {str(table.get_cell(row, "settings")) for row in table.rows}
        # The scenario's own setting (concurrency 1) is measured first; the grid may propose it again, which the
        # tuner answers from memory: at least two distinct settings, all from the space.
        assert len(settings) >= 2 and settings <= {"concurrency=1", "concurrency=2", "concurrency=4"}
    assert spawned_children(before) == []
