"""Fault matrix, vLLM: its engine SIGKILLed in the middle of a load run.

The run must end on its own (vLLM's API server notices the dead engine and exits, so the remaining requests fail
fast), count every request it sent as completed or failed by kind, and the launcher must report the death with the
log tail and leave no process of the group behind. A plain OpenAI-style stream open at the kill must fail too (a
dropped connection, an error status or event), never end as if complete. Its own vLLM (~85 s to start here):
killing the session's shared server would break every later test; and ONE such victim for every engine-kill check,
since each costs a vLLM start.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import psutil
import pytest
from helpers import engine_pids, wait_s

from hpload.errors import ServerError
from hpload.loadgen import LoadSpec, Target, WorkloadSpec, run_load
from hpload.loadgen.snapshot import Snapshot
from hpload.servers import Server, VllmSettings, make_server

pytestmark = pytest.mark.slow


async def test_vllm_engine_killed_mid_run(tiny_model: Path, tmp_path: Path) -> None:
    settings = VllmSettings(label="vllm-faults", model=str(tiny_model), dtype="float32", max_model_len=2048,
                            max_num_seqs=8, startup_timeout_s=wait_s(400))  # fmt: skip
    server = make_server(settings, workdir=tmp_path)
    async with server:
        engines = engine_pids(server.pids())
        assert engines, f"no EngineCore among {server.pids()}"
        snaps: list[Snapshot] = []
        killed = asyncio.Event()
        generating = asyncio.Event()  # the raw stream below has its first token
        raws: list[asyncio.Task[None]] = []
        received: list[str] = []  # the current raw stream's data lines

        def observe(snap: Snapshot) -> None:
            snaps.append(snap)
            # The raw stream starts with the load run's first snapshot, not before it: building the run's prompts
            # (a tokenizer load) can take as long as the whole raw stream on a slow machine.
            # A raw stream that ended whole before the kill (a fast machine) is followed by another, so one is
            # always in flight when the engine dies.
            if not killed.is_set() and (not raws or raws[-1].done()):
                generating.clear()
                received.clear()
                raws.append(asyncio.create_task(_raw_stream(server, generating, received)))
            # Kill once the run is really under way (a few requests done, more in flight) and the raw stream is
            # generating with most of its tokens still to come: states, not a guess at how long either takes. What
            # this client has read lags what the engine has made (the loop is shared with the load run, and the
            # front end buffers), so "most to come" is a wide margin: a stream the engine had finished at the kill
            # ends whole, rightly (a fresh clone saw that with 480 tokens and a half-way mark).
            if (not killed.is_set() and snap.requests_completed >= 3 and generating.is_set() and not raws[-1].done()
                    and len(received) < RAW_TOKENS // 8):
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
        raw = raws[-1]
        assert all(r.done() and r.exception() is None for r in raws[:-1]), "a raw stream failed before the kill"
        assert generating.is_set(), f"the raw stream never generated: {raw.exception() if raw.done() else raw}"
        # The raw stream open at the kill failed: no usage trailer, or an error (status, event, dropped connection).
        with pytest.raises((httpx.HTTPError, StreamFailed)):
            await asyncio.wait_for(raw, timeout=120)
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
        message = str(caught.value)
        assert "vllm-faults exited with code" in message and "last log lines" in message
        assert len(message.splitlines()) > 3, message
    assert not [p for p in server.pids() if psutil.pid_exists(p)], "a process of the dead server's group survived"


class StreamFailed(Exception):
    """A 200 stream that carried an error event or ended without its usage trailer."""


RAW_TOKENS = 1800  # the tiny model allows 2,048 positions: seconds of generation, not a fraction of one


async def _raw_stream(server: Server, generating: asyncio.Event, received: list[str]) -> None:
    """One long streamed chat request read as any OpenAI client reads it; raises if it fails, returns if whole."""
    body = {"model": server.model, "messages": [{"role": "user", "content": "import os"}], "max_tokens": RAW_TOKENS,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
    completed = False
    async with httpx.AsyncClient(timeout=60, trust_env=False) as client:
        async with client.stream("POST", f"{server.base_url}/v1/chat/completions", json=body) as resp:
            resp.raise_for_status()
            async for line in resp.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                received.append(line)
                generating.set()
                if '"error"' in line:
                    raise StreamFailed("error event inside the stream")
                if '"usage"' in line:
                    completed = True
    if not completed:
        raise StreamFailed("stream ended without its usage trailer")
