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
import json
import os
import signal
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
        raws: list[asyncio.Task[None]] = []
        killed = asyncio.Event()
        under_way = asyncio.Event()

        def observe(snap: Snapshot) -> None:
            snaps.append(snap)
            if snap.requests_completed >= 3:  # the run is really under way: a few requests done, more in flight
                under_way.set()

        async def kill_with_a_stream_open() -> None:
            # A plain stream open in the engine at the kill, made certain rather than guessed. The engine is frozen
            # (SIGSTOP) before the stream is sent and thawed only for short slices until the client has the stream's
            # first line, each slice followed by reading everything the front end already had (no new line for
            # 1 s): the engine then has made a few dozen of the stream's 1,800 tokens at most, and is killed frozen.
            # Guessing from what the client had read failed twice: the client and the front end both lag the engine
            # (on a busy machine the front end streamed a request the engine had long finished).
            def signal_engines(sig: int) -> None:
                for pid in engines:
                    os.kill(pid, sig)

            async def drain(raw: asyncio.Task[None], received: list[str]) -> None:
                seen = -1
                while len(received) != seen and not raw.done():
                    seen = len(received)
                    await asyncio.wait([raw], timeout=1.0)

            await under_way.wait()
            for _ in range(5):
                received: list[str] = []
                signal_engines(signal.SIGSTOP)
                raw = asyncio.create_task(_raw_stream(server, received))
                raws.append(raw)
                for _ in range(40):
                    await drain(raw, received)
                    if received or raw.done():
                        break
                    signal_engines(signal.SIGCONT)
                    await asyncio.sleep(0.05)
                    signal_engines(signal.SIGSTOP)
                await drain(raw, received)
                if raw.done() or not received:  # ended (or never started) before the kill: thaw, try again
                    signal_engines(signal.SIGCONT)
                    continue
                for pid in engines:
                    psutil.Process(pid).kill()
                killed.set()
                return
            signal_engines(signal.SIGCONT)

        target = Target(server.base_url, server.model, label="vllm", tokenizer_path=str(tiny_model))
        workload = WorkloadSpec(input_len=16, max_tokens=32, ignore_eos=True)
        # Without the kill this would take minutes: the run's end proves the failures came fast.
        load = LoadSpec(concurrency=4, num_requests=400, connect_timeout_s=5, first_token_timeout_s=60,
                        idle_timeout_s=20)  # fmt: skip
        t0 = time.monotonic()
        killer = asyncio.create_task(kill_with_a_stream_open())
        result = await asyncio.wait_for(
            run_load(target, workload, load, observer=observe, snapshot_interval_s=0.2), timeout=300
        )
        elapsed = time.monotonic() - t0
        if not killed.is_set():
            killer.cancel()
        assert killed.is_set(), "the run ended before the kill"
        await killer
        raw = raws[-1]
        assert all(r.done() and r.exception() is None for r in raws[:-1]), "a raw stream failed before the kill"
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


RAW_TOKENS = 1800  # the tiny model allows 2,048 positions: seconds of generation, so one freeze nearly always holds it open


async def _raw_stream(server: Server, received: list[str]) -> None:
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
                # Parsed, not searched: a random model's token can be the text "error" or "usage", and a chunk
                # carrying it matched a substring test (a 1,800-token stream did, one core busy, as a failure).
                event = json.loads(line[len("data: "):])
                if "error" in event:
                    raise StreamFailed(f"error event inside the stream: {event['error']}")
                if event.get("usage"):
                    completed = True
    if not completed:
        raise StreamFailed("stream ended without its usage trailer")
