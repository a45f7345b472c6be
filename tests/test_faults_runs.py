"""Fault matrix, whole runs: `hpload run` and `hpload tune` as real subprocesses against the echo server.

- the server SIGKILLed in the middle of a sweep point: that point is recorded as failed with its requests counted by
  error kind and the server's log tail, and the sweep goes on with the next point (or stops, as the scenario says);
- Ctrl-C (SIGINT) and SIGTERM during a sweep and during a tuning study: exit 130, the finished points are on disk
  and parse, no child process is left, and a rerun resumes instead of starting over;
- a full disk (a small tmpfs, or a file-size limit where mounting is not allowed): one clear line, no traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from helpers import point_in_progress, wait_s

ECHO = """
[[servers]]
kind = "echo"
label = "echo"
ttft_ms = 20
itl_ms = 5
output_tokens = 16

[workload]
input_len = 4
max_tokens = 16
"""


def write_scenario(tmp_path: Path, name: str, body: str, top: str = "") -> Path:
    """``top``: top-level keys, which TOML wants before the first table."""
    path = tmp_path / f"{name}.toml"
    path.write_text(f'name = "{name}"\n{top}\n' + ECHO + body)
    return path


def hpload(*args: str, log: Path, **kw: object) -> subprocess.Popen[bytes]:
    out = open(log, "wb")  # noqa: SIM115 - the child owns it; closed with the process
    return subprocess.Popen([sys.executable, "-m", "hpload", *args], stdout=out, stderr=subprocess.STDOUT, **kw)  # type: ignore[call-overload]


def finished_points(results: Path) -> list[dict[str, object]]:
    """Every point record on disk, parsed: a half-written file would raise here."""
    points = results / "points"
    if not points.is_dir():
        return []
    return [json.loads(p.read_text()) for p in sorted(points.glob("*.point.json"))]


def wait_for(predicate, timeout_s: float, proc: subprocess.Popen[bytes], log: Path) -> None:  # type: ignore[no-untyped-def]
    """Wait for a state; ``timeout_s`` is scaled for a slow machine (tests/helpers.py)."""
    deadline = time.monotonic() + wait_s(timeout_s)
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"hpload exited early ({proc.returncode}):\n{log.read_text()[-3000:]}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting; log:\n{log.read_text()[-3000:]}")


def echo_children(pid: int) -> list[psutil.Process]:
    try:
        kids = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    out = []
    for p in kids:
        with contextlib.suppress(psutil.Error):
            if "hpload.servers.echo" in " ".join(p.cmdline()):
                out.append(p)
    return out


@pytest.fixture
def reap() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test started; killed (with their echo children) if the test failed half-way."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            for child in echo_children(proc.pid):
                child.kill()
            proc.kill()
            proc.wait(10)


def assert_no_child_left(tree: list[psutil.Process]) -> None:
    _, alive = psutil.wait_procs(tree, timeout=wait_s(15))
    assert not alive, f"left behind: {[(p.pid, p.name()) for p in alive]}"


# ---------------------------------------------------------------- server SIGKILLed mid-run


@pytest.mark.parametrize("on_failure", ["continue", "stop"])
def test_server_killed_mid_sweep(on_failure: str, tmp_path: Path, reap: list[subprocess.Popen[bytes]]) -> None:
    # Point 1 lasts ~20 s (400 requests of ~100 ms at concurrency 2); the kill lands early in it.
    scenario = write_scenario(tmp_path, "crash", """
[load]
concurrency = 2
num_requests = 400
[sweep.load]
num_requests = [400, 20]
""", top=f'on_failure = "{on_failure}"')
    results, log = tmp_path / "results", tmp_path / "run.log"
    proc = hpload("run", str(scenario), "--results", str(results), log=log)
    reap.append(proc)
    # Into the measurement of point 1: its in-progress file counts a measured request recorded (so the server was
    # ready and serving), and the sweep has 399 more to go.
    wait_for(lambda: point_in_progress(results) is not None, 60, proc, log)
    victim = echo_children(proc.pid)[0]
    victim.send_signal(signal.SIGKILL)
    rc = proc.wait(wait_s(120))
    out = log.read_text()
    assert rc == 2, out  # a failed point fails the run, after the sweep (exit 2, one line naming the fix)
    assert "Traceback" not in out, out
    assert not list((results / "points").glob("*.progress.json")), "an ended point still says it is in progress"
    points = finished_points(results)
    crashed = [p for p in points if p["status"] == "failed"]
    assert len(crashed) == 1, points
    error = str(crashed[0]["error"])
    assert "died during the run" in error and "echo server on http://127.0.0.1" in error, error  # cause + log tail
    # The requests cut by the crash are on disk, counted by kind: in flight -> disconnect, after it -> connect.
    result = json.loads((results / str(crashed[0]["result_file"])).read_text())
    assert set(result["errors"]) <= {"disconnect", "connect", "stream"} and sum(result["errors"].values()) > 0
    assert crashed[0]["summary"]["failed"] == sum(result["errors"].values())
    ok = [p for p in points if p["status"] == "ok"]
    if on_failure == "continue":
        assert len(ok) == 1 and ok[0]["summary"]["completed"] == 20, points  # a fresh echo served point 2
    else:
        assert ok == [], points  # on_failure = "stop": the crashed point was the last one measured


# ---------------------------------------------------------------- SIGINT / SIGTERM, then resume


SWEEP = """
[load]
concurrency = 1
num_requests = 40
[sweep.load]
concurrency = [1, 2, 3, 4, 5, 6]
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_during_a_sweep_keeps_points_and_rerun_resumes(
    signum: int, tmp_path: Path, reap: list[subprocess.Popen[bytes]]
) -> None:
    scenario = write_scenario(tmp_path, "sweep", SWEEP)
    results, log = tmp_path / "results", tmp_path / "run.log"
    proc = hpload("run", str(scenario), "--results", str(results), log=log)
    reap.append(proc)
    wait_for(lambda: len(finished_points(results)) >= 2, 120, proc, log)
    tree = [psutil.Process(proc.pid), *echo_children(proc.pid)]
    proc.send_signal(signum)
    rc = proc.wait(wait_s(60))
    out = log.read_text()
    assert rc == 130, out
    assert "interrupted; finished results are on disk" in out and "Traceback" not in out, out
    assert_no_child_left(tree)
    kept = finished_points(results)
    assert 2 <= len(kept) < 6 and all(p["status"] == "ok" for p in kept), kept

    rerun_log = tmp_path / "rerun.log"
    again = hpload("run", str(scenario), "--results", str(results), log=rerun_log)
    reap.append(again)
    assert again.wait(wait_s(180)) == 0, rerun_log.read_text()
    rerun = rerun_log.read_text()
    assert f"{len(kept)} already there" in rerun, rerun
    assert len(finished_points(results)) == 6
    # The points finished before the signal were not measured again: their files are untouched.
    for before in kept:
        path = results / "points" / f"{before['point_id']}.point.json"
        assert json.loads(path.read_text()) == before


# ---------------------------------------------------------------- load-generator worker processes

WORKERS = """
[load]
concurrency = 4
num_requests = 1000000
workers = 2
"""


def loadgen_workers(pid: int) -> list[psutil.Process]:
    out = []
    for p in psutil.Process(pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "spawn_main" in " ".join(p.cmdline()):
                out.append(p)
    return out


def test_ctrl_c_in_a_terminal_reaches_the_workers_too(tmp_path: Path, reap: list[subprocess.Popen[bytes]]) -> None:
    # A terminal's Ctrl-C sends SIGINT to the whole foreground process group: hpload and its load-generator workers.
    # The parent owns it (it halts the workers); a worker dying of it printed a traceback per worker.
    scenario = write_scenario(tmp_path, "workers", WORKERS)
    results, log = tmp_path / "results", tmp_path / "run.log"
    proc = hpload("run", str(scenario), "--results", str(results), log=log, start_new_session=True)
    reap.append(proc)
    wait_for(lambda: point_in_progress(results, measured=20) is not None, 60, proc, log)
    tree = [psutil.Process(proc.pid), *loadgen_workers(proc.pid), *echo_children(proc.pid)]
    assert len(tree) >= 4, tree  # hpload, two workers, the echo server
    os.killpg(proc.pid, signal.SIGINT)
    rc = proc.wait(wait_s(60))
    out = log.read_text()
    assert rc == 130, out
    assert "interrupted; finished results are on disk" in out and "Traceback" not in out, out
    assert_no_child_left(tree)


def test_sigkill_of_hpload_takes_its_workers_along(tmp_path: Path, reap: list[subprocess.Popen[bytes]]) -> None:
    # Nothing of hpload runs after a SIGKILL: the workers (and the echo server) go through the parent-death signal,
    # or they would keep loading the server for the rest of the million requests.
    scenario = write_scenario(tmp_path, "workers", WORKERS)
    results, log = tmp_path / "results", tmp_path / "run.log"
    proc = hpload("run", str(scenario), "--results", str(results), log=log)
    reap.append(proc)
    wait_for(lambda: point_in_progress(results, measured=20) is not None, 60, proc, log)
    workers = loadgen_workers(proc.pid)
    assert len(workers) == 2, workers
    left = [*workers, *echo_children(proc.pid)]
    proc.kill()
    proc.wait(10)
    assert_no_child_left(left)


TUNE = """
[load]
concurrency = 1
num_requests = 30

[tune]
sampler = "random"
n_trials = 5
seed = 3

[tune.space.load]
concurrency = { values = [1, 2, 3, 4, 5, 6, 7, 8] }
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_during_a_tuning_study_keeps_trials_and_rerun_resumes(
    signum: int, tmp_path: Path, reap: list[subprocess.Popen[bytes]]
) -> None:
    scenario = write_scenario(tmp_path, "tune", TUNE)
    results, log = tmp_path / "results", tmp_path / "tune.log"
    proc = hpload("tune", str(scenario), "--results", str(results), log=log)
    reap.append(proc)
    wait_for(lambda: len(finished_points(results)) >= 1, 180, proc, log)
    tree = [psutil.Process(proc.pid), *echo_children(proc.pid)]
    proc.send_signal(signum)
    rc = proc.wait(wait_s(60))
    out = log.read_text()
    assert rc == 130, out
    assert "Traceback" not in out, out
    assert_no_child_left(tree)
    kept = finished_points(results)
    assert 1 <= len(kept) < 5, kept
    assert (results / "study.db").is_file()

    rerun_log = tmp_path / "retune.log"
    again = hpload("tune", str(scenario), "--results", str(results), log=rerun_log)
    reap.append(again)
    assert again.wait(wait_s(240)) == 0, rerun_log.read_text()
    retune = rerun_log.read_text()
    # Resumed: the study counts the trials it already had, so fewer than n_trials are measured this time.
    measured_now = retune.count("trial ") - retune.count("[known point")
    assert measured_now < 5, retune
    assert {p["point_id"] for p in kept} <= {p["point_id"] for p in finished_points(results)}


# ---------------------------------------------------------------- full disk


def _can_mount_tmpfs(where: Path) -> bool:
    if os.geteuid() != 0:
        return False
    where.mkdir(parents=True, exist_ok=True)
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32k", "tmpfs", str(where)], capture_output=True).returncode
    return ok == 0


def test_full_disk_gives_one_clear_line(tmp_path: Path) -> None:
    scenario = write_scenario(tmp_path, "full", "[load]\nconcurrency = 2\nnum_requests = 10\n")
    mount = tmp_path / "small"
    mounted = _can_mount_tmpfs(mount)
    preexec = None
    if mounted:
        # Fill it, so the first result written hits ENOSPC.
        with contextlib.suppress(OSError), open(mount / "filler", "wb") as fh:
            fh.write(b"\0" * 64 * 1024)
    else:
        # No mount here: a file-size limit gives EFBIG the same way (SIGXFSZ ignored, as a shell would not).
        def preexec() -> None:  # type: ignore[misc]
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))

    results = mount / "results"
    try:
        # Output through pipes: a file-size limit would silence a log file, not a pipe.
        proc = subprocess.run([sys.executable, "-m", "hpload", "run", str(scenario), "--results", str(results)],
                              capture_output=True, text=True, timeout=wait_s(120), preexec_fn=preexec)  # fmt: skip
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(mount)], check=False)
    rc, out = proc.returncode, proc.stdout + proc.stderr
    assert rc != 0 and "Traceback" not in out, out
    errors = [line for line in out.splitlines() if "error:" in line]
    assert len(errors) == 1, out
    assert "results" in errors[0] and ("No space left" in errors[0] or "too large" in errors[0]), errors[0]
    assert "fix:" in errors[0], errors[0]
