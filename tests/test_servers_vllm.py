"""vLLM and the transformers wrapper under the same client code. (A vLLM engine death, seen by a raw stream, the load
generator and the launcher: tests/test_faults_vllm.py, on one victim server for all of it.)"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from hpload.servers import Server

pytestmark = pytest.mark.slow

MAX_TOKENS = 12


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
