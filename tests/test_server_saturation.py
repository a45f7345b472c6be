"""Server saturation said plainly: with a healthy client and a low engine queue, the launched server's process at a
full core is named (the API server or the engine core), and nothing is named when the evidence points elsewhere."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil

from hpload.loadgen.vocabulary import SERVER_METRICS_KEYS
from hpload.servers.saturation import ServerCpu, verdict

PROCS = [{"pid": 11, "role": "API server", "cpu_percent": 99.0}, {"pid": 12, "role": "engine core", "cpu_percent": 41.0}]


def test_the_saturated_process_is_named_only_on_the_right_evidence() -> None:
    line = verdict(PROCS, client_healthy=True, client_ttft_ms=80.0, queue_mean_ms=0.4, outside_engine_ms=60.0)
    assert line is not None and "API server process (pid 11) used 99% of a core" in line and "engine core 41%" in line
    assert "client or" not in line and "--" not in line  # no remedy guessed, no blame on the client
    # The client is not healthy: its own warning stands, the server is not blamed.
    assert verdict(PROCS, client_healthy=False, client_ttft_ms=80.0, queue_mean_ms=0.4, outside_engine_ms=60.0) is None
    # Requests wait in the engine's queue: that is the engine being full, not a saturated front end.
    assert verdict(PROCS, client_healthy=True, client_ttft_ms=80.0, queue_mean_ms=40.0, outside_engine_ms=20.0) is None
    # The engine accounts for the TTFT.
    assert verdict(PROCS, client_healthy=True, client_ttft_ms=80.0, queue_mean_ms=0.4, outside_engine_ms=5.0) is None
    # No process at a full core.
    calm = [{"pid": 11, "role": "API server", "cpu_percent": 50.0}]
    assert verdict(calm, client_healthy=True, client_ttft_ms=80.0, queue_mean_ms=0.4, outside_engine_ms=60.0) is None


def test_cpu_of_a_launched_process_tree_names_its_engine_core() -> None:
    # A leader that sleeps and a child titled as vLLM titles its engine core, burning a core.
    child = "import subprocess, time; subprocess.Popen(['bash', '-c', 'exec -a VLLM::EngineCore " + sys.executable + \
        " -c \"while True: pass\"']); time.sleep(60)"  # fmt: skip
    leader = subprocess.Popen([sys.executable, "-c", child], start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while not psutil.Process(leader.pid).children() and time.monotonic() < deadline:
            time.sleep(0.05)
        with ServerCpu(leader.pid, "vllm") as cpu:
            time.sleep(1.0)
    finally:
        for proc in psutil.Process(leader.pid).children(recursive=True):
            proc.kill()
        leader.kill()
        leader.wait()
    top = cpu.processes[0]
    assert top["role"] == "engine core" and top["cpu_percent"] > 20, cpu.processes
    assert all(p["role"] != "engine core" for p in cpu.processes[1:])


async def test_a_measured_point_records_its_launched_servers_processes() -> None:
    from hpload.loadgen import SLO, LoadSpec, WorkloadSpec
    from hpload.scenarios.runner import ServerKeeper, measure
    from hpload.servers import EchoSettings

    keeper = ServerKeeper()
    try:
        result, error = await measure(keeper, EchoSettings(ttft_ms=5, itl_ms=1, output_tokens=16),
                                      WorkloadSpec(input_len=8, max_tokens=16), LoadSpec(concurrency=8, num_requests=200),
                                      SLO())  # fmt: skip
    finally:
        await keeper.close()
    assert error is None and result is not None
    processes = (result.server_metrics or {})["processes"]
    assert set(result.server_metrics or {}) <= SERVER_METRICS_KEYS
    # The echo server is one process: it did the work, and it is named as the server.
    assert processes and processes[0]["role"] == "echo server" and processes[0]["cpu_percent"] > 1, processes
