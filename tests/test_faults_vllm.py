"""Fault matrix, vLLM: its engine SIGKILLed in the middle of a load run.

The run must end on its own (vLLM's API server notices the dead engine and exits, so the remaining requests fail
fast), count every request it sent as completed or failed by kind, and the launcher must report the death with the
log tail and leave no process of the group behind. Its own vLLM (~85 s to start here): killing the session's shared
server would break every later test.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import psutil
import pytest
from helpers import engine_pids

from hpload.errors import ServerError
from hpload.loadgen import LoadSpec, Target, WorkloadSpec, run_load
from hpload.loadgen.snapshot import Snapshot
from hpload.servers import VllmSettings, make_server

pytestmark = pytest.mark.slow


async def test_vllm_engine_killed_mid_run(tiny_model: Path, tmp_path: Path) -> None:
    settings = VllmSettings(label="vllm-faults", model=str(tiny_model), dtype="float32", max_model_len=256,
                            max_num_seqs=4, startup_timeout_s=400)  # fmt: skip
    server = make_server(settings, workdir=tmp_path)
    async with server:
        engines = engine_pids(server.pids())
        assert engines, f"no EngineCore among {server.pids()}"
        snaps: list[Snapshot] = []
        killed = asyncio.Event()

        def observe(snap: Snapshot) -> None:
            snaps.append(snap)
            # Kill once the run is really under way: a few requests done, more in flight.
            if not killed.is_set() and snap.requests_completed >= 3:
                for pid in engines:
                    psutil.Process(pid).kill()
                killed.set()

        target = Target(server.base_url, server.model, label="vllm", tokenizer_path=str(tiny_model))
        workload = WorkloadSpec(input_len=16, max_tokens=32, ignore_eos=True)
        # Without the kill this would take minutes: the run's end proves the failures came fast.
        load = LoadSpec(concurrency=4, num_requests=400, connect_timeout_s=5, first_token_timeout_s=60,
                        idle_timeout_s=20)  # fmt: skip
        t0 = time.monotonic()
        result = await asyncio.wait_for(
            run_load(target, workload, load, observer=observe, snapshot_interval_s=0.2), timeout=300
        )
        elapsed = time.monotonic() - t0
        assert killed.is_set(), "the run ended before the kill"
        s = result.summary
        assert s["completed"] >= 3 and s["failed"] >= 1, (s, result.errors)
        assert s["completed"] + s["failed"] + result.counters.get("incomplete", 0) == 400, (s, result.counters)
        assert set(result.errors) <= {"disconnect", "connect", "stream", "http_5xx", "timeout", "protocol"}
        assert all(result.error_samples[kind] for kind in result.errors)
        assert elapsed < 200, elapsed
        # The launcher sees the death and says why, quoting the log.
        assert await server.wait_exit(60) is not None, "vLLM kept running without its engine"
        with pytest.raises(ServerError) as caught:
            server.check()
        assert "vllm-faults exited with code" in str(caught.value) and "last log lines" in str(caught.value)
    assert not [p for p in server.pids() if psutil.pid_exists(p)], "a process of the dead server's group survived"
