"""Client health that blames the right thing: a client whose core another process took is *starved*, not busy, and
the warning says so (and does not tell the user to add workers)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from helpers import start_server, stop_server

from hpload.loadgen import LoadSpec, Target, WorkloadSpec, run_load
from hpload.loadgen.health import verdict
from hpload.loadgen.starvation import RunQueueMeter, sched_ns
from hpload.servers import EchoSettings, Server, make_server


@pytest.fixture(scope="module")
def echo() -> Iterator[Server]:
    server = start_server(make_server(EchoSettings(ttft_ms=20, itl_ms=5, output_tokens=20)))
    try:
        yield server
    finally:
        stop_server(server)


def test_verdict_tells_a_busy_client_from_a_starved_one() -> None:
    busy = verdict(cpu_percent=97.0, loop_lag_ms=35.0, schedule_lag_ms=0.0, lag_share_waiting=0.05)
    assert busy is not None and "--workers" in busy and "starv" not in busy
    # The docs/tui.png case: loop lag p99 30.9 ms at 3% CPU, the lag spent waiting for a CPU.
    starved = verdict(cpu_percent=3.0, loop_lag_ms=30.9, schedule_lag_ms=0.0, lag_share_waiting=0.9)
    assert starved is not None and "starving" in starved and "another process" in starved
    assert "--workers" not in starved
    # Lag the loop did not spend waiting for a CPU (its own blocking call): not blamed on the host.
    other = verdict(cpu_percent=3.0, loop_lag_ms=30.9, schedule_lag_ms=0.0, lag_share_waiting=0.05)
    assert other is not None and "starving" not in other
    assert verdict(cpu_percent=20.0, loop_lag_ms=2.0, schedule_lag_ms=0.0, lag_share_waiting=0.9) is None


def start_hog(core: int) -> subprocess.Popen[bytes]:
    """A process pinned to the client's core that takes it in bursts of 40 ms out of every 60 (real-time priority
    where allowed, else nice -10), so the client is starved on any machine: on a quiet core at equal priority the
    scheduler lets a waking client in so soon that its loop barely lags."""
    code = (f"import os, time\nos.sched_setaffinity(0, {{{core}}})\n"
            "try:\n    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))\n"
            "except OSError:\n    os.setpriority(os.PRIO_PROCESS, 0, -10)\n"
            "while True:\n    end = time.monotonic() + 0.04\n    while time.monotonic() < end:\n        pass\n"
            "    time.sleep(0.02)\n")  # fmt: skip
    return subprocess.Popen([sys.executable, "-c", code])


def stop_hog(hog: subprocess.Popen[bytes]) -> None:
    hog.kill()
    hog.wait()


@pytest.mark.skipif(sched_ns() is None, reason="no /proc/<pid>/task/*/schedstat on this kernel")
async def test_another_process_on_the_clients_core_is_named(echo: Server) -> None:
    core = min(os.sched_getaffinity(0))
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {core})
    # A hog pinned to the same core takes it two thirds of the time: the client waits for it, though not busy.
    hog = start_hog(core)
    try:
        meter = RunQueueMeter()
        result = await run_load(Target(echo.base_url, echo.model, label="echo"),
                                WorkloadSpec(input_len=8, max_tokens=20, num_prompts=50),
                                LoadSpec(concurrency=16, num_requests=300))  # fmt: skip
        waited = meter.total()
    finally:
        stop_hog(hog)
        os.sched_setaffinity(0, before)
    assert result.summary["completed"] == 300
    h = result.health
    assert waited is not None and waited > 25, waited  # the setup really starved the client
    assert h["loop_lag_waiting_share"] >= 0.5, h
    warnings = h["warnings"]
    assert warnings, h
    assert any("starving the client" in w and "another process" in w for w in warnings), warnings
    assert not any("--workers" in w for w in warnings), warnings
