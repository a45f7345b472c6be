"""The transformers wrapper as a real subprocess: bad requests, per-request parameters, metrics, both modes."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import wait_s

from hpload.servers import HFSettings, Server, make_server

pytestmark = pytest.mark.slow


async def _post(server: Server, path: str, body: dict[str, Any] | bytes) -> httpx.Response:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=120, trust_env=False) as client:
        if isinstance(body, bytes):
            return await client.post(path, content=body, headers={"content-type": "application/json"})
        return await client.post(path, json=body)


async def _stream(server: Server, body: dict[str, Any], path: str = "/v1/completions") -> dict[str, Any]:
    body = {**body, "model": server.model, "stream": True, "stream_options": {"include_usage": True}}
    out: dict[str, Any] = {"chunks": 0, "text": "", "usage": None, "finish": None}
    async with httpx.AsyncClient(base_url=server.base_url, timeout=120, trust_env=False) as client:
        async with client.stream("POST", path, json=body) as resp:
            assert resp.status_code == 200, await resp.aread()
            async for line in resp.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                obj = json.loads(line[6:])
                assert "error" not in obj, obj
                if obj.get("usage"):
                    out["usage"] = obj["usage"]
                for choice in obj["choices"]:
                    piece = choice.get("text") if "text" in choice else choice["delta"].get("content")
                    if piece:
                        out["chunks"] += 1
                        out["text"] += piece
                    out["finish"] = choice["finish_reason"] or out["finish"]
    return out


async def _metric(server: Server, name: str) -> float:
    async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
        text = (await client.get(f"{server.base_url}/metrics")).text
    match = re.search(rf"^hf:{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} missing from /metrics"
    return float(match.group(1))


async def test_invalid_requests_get_4xx_and_the_server_stays_up(hf_server: Server) -> None:
    model = hf_server.model
    cases: list[tuple[str, dict[str, Any] | bytes, int, str]] = [
        ("/v1/completions", b"{bad json", 400, "JSON"),
        ("/v1/completions", {"model": "no-such-model", "prompt": "x"}, 404, "model"),
        ("/v1/completions", {"model": model, "prompt": "x", "max_tokens": -1}, 400, "max_tokens"),
        ("/v1/completions", {"model": model, "prompt": "word " * 3000}, 400, "context"),
        ("/v1/completions", {"model": model, "prompt": "x", "max_tokens": 2048}, 400, "max_tokens"),
        ("/v1/completions", {"model": model, "prompt": [1, 2, 999999]}, 400, "prompt"),
        ("/v1/chat/completions", {"model": model, "messages": []}, 400, "messages"),
        ("/v1/completions", b'{"model": ' + json.dumps(model).encode() + b', "prompt": "a\\ud800b"}', 400, "prompt"),
        ("/v1/completions", {"model": model, "prompt": "x", "seed": 2**70}, 400, "seed"),
        ("/v1/completions", b"[" * 50000, 400, "JSON"),
        ("/v1/no-such-route", {"model": model}, 404, "no-such-route"),
    ]
    for path, body, status, word in cases:
        resp = await _post(hf_server, path, body)
        assert resp.status_code == status, (path, body, resp.text)
        error = resp.json()["error"]
        assert word.lower() in error["message"].lower(), error
    assert hf_server.alive()
    ok = await _post(hf_server, "/v1/completions", {"model": model, "prompt": "x", "max_tokens": 2})
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] <= 2
    # A temperature so small that logits / temperature overflows is served as greedy, not as a failed batch.
    tiny_t = await _post(hf_server, "/v1/completions", {"model": model, "prompt": "x", "max_tokens": 2,
                                                        "temperature": 1e-300, "ignore_eos": True})
    assert tiny_t.status_code == 200 and tiny_t.json()["usage"]["completion_tokens"] == 2


async def test_per_request_lengths_seed_and_stop(hf_server: Server) -> None:
    fixed = await _stream(hf_server, {"prompt": "import os", "max_tokens": 20, "min_tokens": 20, "ignore_eos": True})
    assert fixed["usage"]["completion_tokens"] == 20 and fixed["finish"] == "length"
    assert fixed["chunks"] >= 5  # streamed as generated

    seeded = [await _stream(hf_server, {"prompt": "class A:", "max_tokens": 16, "ignore_eos": True,
                                        "temperature": 1.0, "top_p": 0.9, "seed": 1234}) for _ in range(2)]
    assert seeded[0]["text"] == seeded[1]["text"]

    greedy = await _stream(hf_server, {"prompt": "def f(x):", "max_tokens": 24, "ignore_eos": True, "temperature": 0})
    stop = greedy["text"][len(greedy["text"]) // 2 :][:3]
    assert stop.strip(), greedy
    cut = await _stream(hf_server, {"prompt": "def f(x):", "max_tokens": 24, "ignore_eos": True, "temperature": 0,
                                    "stop": [stop]})
    assert cut["finish"] == "stop" and stop not in cut["text"]
    assert greedy["text"].startswith(cut["text"])
    assert cut["usage"]["completion_tokens"] < 24


async def test_concurrent_requests_batch_and_metrics_count_every_token(hf_server: Server) -> None:
    before = await _metric(hf_server, "generation_tokens_total")
    ttft_before = await _metric(hf_server, "time_to_first_token_seconds_count")
    results = await asyncio.gather(*[
        _stream(hf_server, {"prompt": f"print({i})", "max_tokens": 10 + i, "ignore_eos": True}) for i in range(8)
    ])
    assert [r["usage"]["completion_tokens"] for r in results] == [10 + i for i in range(8)]
    assert await _metric(hf_server, "generation_tokens_total") - before == sum(10 + i for i in range(8))
    assert await _metric(hf_server, "time_to_first_token_seconds_count") - ttft_before == 8
    assert await _metric(hf_server, "num_requests_running") == 0
    async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
        text = (await client.get(f"{hf_server.base_url}/metrics")).text
    # At least one generate() call ran more than one request at once.
    assert int(re.search(r'^hf:batch_size_bucket\{le="1.0"\} (\d+)$', text, re.MULTILINE).group(1)) < int(  # type: ignore[union-attr]
        re.search(r"^hf:batch_size_count (\d+)$", text, re.MULTILINE).group(1)  # type: ignore[union-attr]
    )


async def test_a_batch_never_outgrows_the_context(hf_server: Server) -> None:
    # Together these would pad to 1500 + 1000 > 2048 positions; the server must run them in separate batches.
    long_prompt = {"model": hf_server.model, "prompt": "word " * 1500, "max_tokens": 10, "ignore_eos": True}
    long_output = {"model": hf_server.model, "prompt": "word", "max_tokens": 1000, "ignore_eos": True}
    first, second = await asyncio.gather(_post(hf_server, "/v1/completions", long_prompt),
                                         _post(hf_server, "/v1/completions", long_output))
    assert first.status_code == 200 and second.status_code == 200, (first.text, second.text)
    assert first.json()["usage"]["prompt_tokens"] >= 1000
    assert first.json()["usage"]["completion_tokens"] == 10 and second.json()["usage"]["completion_tokens"] == 1000


async def _abandon_stream(server: Server) -> None:
    """Read a few chunks of a long stream, then hang up."""
    body = {"model": server.model, "prompt": "while True:", "max_tokens": 1500, "ignore_eos": True, "stream": True}
    async with httpx.AsyncClient(base_url=server.base_url, timeout=120, trust_env=False) as client:
        async with client.stream("POST", "/v1/completions", json=body) as resp:
            seen = 0
            async for line in resp.aiter_lines():
                seen += line.startswith("data: ")
                if seen >= 3:
                    break


async def _aborted(server: Server) -> float:
    async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
        text = (await client.get(f"{server.base_url}/metrics")).text
    match = re.search(r'^hf:request_success_total\{finished_reason="abort"\} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def _assert_disconnect_frees_the_batch(server: Server) -> None:
    before = await _aborted(server)
    await _abandon_stream(server)
    deadline = time.monotonic() + wait_s(10)
    while time.monotonic() < deadline:  # generation must stop soon, not run the remaining ~1500 tokens
        if await _aborted(server) > before and await _metric(server, "num_requests_running") == 0:
            break
        await asyncio.sleep(0.1)
    assert await _aborted(server) == before + 1
    assert await _metric(server, "num_requests_running") == 0


async def test_client_disconnect_stops_generation(hf_server: Server) -> None:
    await _assert_disconnect_frees_the_batch(hf_server)


async def test_continuous_mode_streams_chat_with_exact_usage(tiny_model: Path, tmp_path: Path) -> None:
    settings = HFSettings(label="hf-cb", model=str(tiny_model), mode="continuous", batch_size=4, device="cpu",
                          torch_threads=1, startup_timeout_s=wait_s(60))
    async with make_server(settings, workdir=tmp_path) as server:
        before = await _metric(server, "generation_tokens_total")  # the readiness probe generated one already
        results = await asyncio.gather(*[
            _stream(server, {"messages": [{"role": "user", "content": f"task {i}"}], "max_tokens": 12 + i,
                             "ignore_eos": True}, path="/v1/chat/completions")
            for i in range(6)
        ])
        for i, res in enumerate(results):
            assert res["usage"]["completion_tokens"] == 12 + i and res["finish"] == "length"
            assert res["chunks"] >= 3
        seeded = await _post(server, "/v1/completions", {"model": server.model, "prompt": "x", "seed": 3})
        assert seeded.status_code == 400 and "seed" in seeded.json()["error"]["message"]
        nucleus = await _post(server, "/v1/completions", {"model": server.model, "prompt": "x", "top_p": 0.9})
        assert nucleus.status_code == 400 and nucleus.json()["error"]["param"] == "top_p"
        assert await _metric(server, "generation_tokens_total") - before == sum(12 + i for i in range(6))
        await _assert_disconnect_frees_the_batch(server)
