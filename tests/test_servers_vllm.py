"""vLLM and the transformers wrapper under the same client code; and a vLLM engine death seen by the launcher."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from helpers import engine_pids

from hpload.errors import ServerError
from hpload.servers import Server, VllmSettings, make_server

pytestmark = pytest.mark.slow

MAX_TOKENS = 12


class StreamFailed(Exception):
    """A 200 stream that carried an error event or ended without its usage trailer."""


async def stream_chat(server: Server, content: str, max_tokens: int = MAX_TOKENS) -> dict[str, Any]:
    """One streamed chat request, read the way any OpenAI client reads it: content chunks, finish, usage."""
    body = {
        "model": server.model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    out: dict[str, Any] = {"content_chunks": 0, "usage": None, "finish": None, "done": False, "text": ""}
    async with httpx.AsyncClient(timeout=120, trust_env=False) as client:
        async with client.stream("POST", f"{server.base_url}/v1/chat/completions", json=body,
                                 headers=server.headers()) as resp:
            assert resp.status_code == 200, await resp.aread()
            async for line in resp.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    out["done"] = True
                    continue
                obj = json.loads(data)
                if obj.get("usage"):
                    out["usage"] = obj["usage"]
                for choice in obj.get("choices", []):
                    if choice["delta"].get("content"):
                        out["content_chunks"] += 1
                        out["text"] += choice["delta"]["content"]
                    if choice.get("finish_reason"):
                        out["finish"] = choice["finish_reason"]
    return out


async def test_same_streamed_chat_on_vllm_and_wrapper(vllm_server: Server, hf_server: Server) -> None:
    prompt = "def fibonacci(n):"
    results = {}
    for server in (vllm_server, hf_server):
        results[server.label] = await stream_chat(server, prompt)
    for label, res in results.items():
        assert res["done"], label
        assert res["finish"] == "length", (label, res)
        assert res["usage"]["completion_tokens"] == MAX_TOKENS, (label, res["usage"])
        # Tokens arrive as they are generated, not as one block at the end.
        assert res["content_chunks"] >= MAX_TOKENS // 2, (label, res)
    # Same tokenizer and chat template on both sides: the prompts count the same.
    assert results["vllm"]["usage"]["prompt_tokens"] == results["hf"]["usage"]["prompt_tokens"]


async def test_engine_killed_mid_request_is_reported(tiny_model: Path, tmp_path: Path) -> None:
    # Its own server: killing the session's shared one would break every later test.
    settings = VllmSettings(label="vllm-victim", model=str(tiny_model), dtype="float32", max_model_len=512,
                            max_num_seqs=4, startup_timeout_s=400)
    server = make_server(settings, workdir=tmp_path)
    async with server:
        engines = engine_pids(server.pids())
        assert engines, f"no EngineCore process among {server.pids()}"
        body = {"model": server.model, "messages": [{"role": "user", "content": "import os"}], "max_tokens": 480,
                "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
        completed = False
        with pytest.raises((httpx.HTTPError, StreamFailed)):  # a dropped connection, an error status or event
            async with httpx.AsyncClient(timeout=60, trust_env=False) as client:
                async with client.stream("POST", f"{server.base_url}/v1/chat/completions", json=body) as resp:
                    resp.raise_for_status()
                    killed = False
                    async for line in resp.aiter_lines():
                        if not killed and line.startswith("data: {"):  # generation is under way: kill its engine
                            for pid in engines:
                                psutil.Process(pid).send_signal(signal.SIGKILL)
                            killed = True
                        if line.startswith("data: {") and '"usage"' in line:
                            completed = True
                        if line.startswith("data: {") and '"error"' in line:
                            raise StreamFailed("error event inside the stream")
            if not completed:
                raise StreamFailed("stream ended without its usage trailer")
        assert not completed
        # vLLM's watchdog notices a dead engine within ~5 s and shuts the API server down.
        assert await server.wait_exit(60) is not None, "vLLM kept running without its engine"
        assert not server.alive()
        with pytest.raises(ServerError) as caught:
            server.check()
        message = str(caught.value)
        assert "vllm-victim exited with code" in message
        assert "last log lines" in message and len(message.splitlines()) > 3
    assert not [p for p in server.pids() if psutil.pid_exists(p)], "a process of the dead server's group survived"
