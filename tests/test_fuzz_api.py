"""Fault matrix: the wrapper's HTTP API fuzzed with hypothesis (it serves no OpenAPI schema for schemathesis).

Request bodies are drawn near the OpenAI shape (right and wrong types for every field the wrapper reads, huge and
negative numbers, odd unicode), plus arbitrary JSON, raw bytes, wrong methods and unknown paths. Every answer must be
2xx or 4xx — never a 5xx, an error event or a dropped connection — and the server must still serve a normal request
afterwards. The echo server's hand-written HTTP parser gets the same treatment at the byte level.
"""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hpload.servers import Server

HEALTH = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]

small_ints = st.integers(-3, 6)
any_int = st.one_of(small_ints, st.integers(2**31, 2**70), st.integers(-(2**70), -(2**31)))
odd_text = st.text(max_size=12)
scalars = st.one_of(st.none(), st.booleans(), any_int, st.floats(allow_nan=False, allow_infinity=False), odd_text)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(odd_text, inner,
                                                                                                  max_size=3),
                           max_leaves=8)  # fmt: skip


def field(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a plausible value, sometimes anything at all."""
    return st.one_of(good, good, json_values)


def request_body(model: str, chat: bool) -> st.SearchStrategy[dict[str, Any]]:
    common = {
        "model": field(st.sampled_from([model, model, "no-such-model", ""])),
        "max_tokens": field(st.one_of(st.integers(-2, 8), st.integers(10**5, 10**20))),
        "min_tokens": field(st.integers(-2, 8)),
        "ignore_eos": field(st.booleans()),
        "temperature": field(st.one_of(st.sampled_from([0.0, 0.7, 1.0]), st.floats(-5, 50))),
        "top_p": field(st.floats(-1, 2)),
        "seed": field(any_int),
        "stop": field(st.one_of(odd_text, st.lists(odd_text, max_size=6))),
        "stream": field(st.booleans()),
        "stream_options": field(st.fixed_dictionaries({"include_usage": st.booleans()})),
        "n": field(st.integers(-1, 3)),
    }
    if chat:
        message = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "x"]),
                                         "content": st.one_of(odd_text, st.none(), json_values)})  # fmt: skip
        specific = {"messages": field(st.lists(message, max_size=3)),
                    "max_completion_tokens": field(st.integers(-2, 8))}  # fmt: skip
    else:
        specific = {"prompt": field(st.one_of(odd_text, st.lists(st.integers(-5, 40000), max_size=6),
                                              st.lists(odd_text, max_size=2),
                                              st.lists(st.lists(st.integers(0, 100), max_size=4), max_size=2)))}  # fmt: skip
    # Each field present or absent, so "missing" is fuzzed too; valid requests of varied shape are mixed in, so the
    # happy path (streamed and not, every optional parameter) is exercised under the same fuzzing.
    fields = {**common, **specific}
    valid_prompt = {"messages": st.just([{"role": "user", "content": "hi"}])} if chat else {
        "prompt": st.one_of(odd_text.filter(str.strip), st.lists(st.integers(1, 200), min_size=1, max_size=6))}
    valid = st.fixed_dictionaries(
        {"model": st.just(model), **valid_prompt},
        optional={"max_tokens": st.integers(1, 6), "temperature": st.sampled_from([0.0, 0.8]),
                  "top_p": st.floats(0.1, 1.0), "seed": st.integers(0, 2**32), "stream": st.booleans(),
                  "stop": st.lists(odd_text, max_size=2),
                  "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()})},
    )  # fmt: skip
    return st.one_of(valid, st.fixed_dictionaries({}, optional=fields))


async def check_answer(client: httpx.AsyncClient, method: str, path: str, content: bytes) -> int:
    async with client.stream(method, path, content=content, headers={"content-type": "application/json"}) as resp:
        body = await resp.aread()
    status = resp.status_code
    assert status < 500, f"{method} {path} {content[:300]!r} -> {status}: {body[:300]!r}"
    if status >= 400 and body:
        error = json.loads(body)["error"]  # an OpenAI-style error body, naming what was wrong
        assert error["message"], body
    if status == 200 and b"data: " in body[:6]:
        assert b'"error"' not in body, f"error event in a 200 stream for {content[:300]!r}: {body[-300:]!r}"
        assert body.rstrip().endswith(b"data: [DONE]"), body[-200:]
    return status


async def assert_still_serves(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=60, trust_env=False) as client:
        assert (await client.get("/health")).status_code == 200
        ok = await client.post("/v1/completions", json={"model": server.model, "prompt": "hi", "max_tokens": 2})
        assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] >= 1, ok.text
    assert server.alive()


@pytest.mark.slow
def test_wrapper_answers_fuzzed_requests_with_2xx_or_4xx(hf_server: Server) -> None:
    seen: set[int] = set()

    @settings(max_examples=120, deadline=None, suppress_health_check=HEALTH, database=None)
    @given(chat=st.booleans(), data=st.data())
    def fuzz(chat: bool, data: st.DataObject) -> None:
        body = data.draw(request_body(hf_server.model, chat))
        path = "/v1/chat/completions" if chat else "/v1/completions"
        if not {"max_tokens", "max_completion_tokens"} & set(body):
            body["max_tokens"] = 3  # the default fills the context: hundreds of tokens per request on a CPU

        async def go() -> None:
            async with httpx.AsyncClient(base_url=hf_server.base_url, timeout=120, trust_env=False) as client:
                seen.add(await check_answer(client, "POST", path, json.dumps(body).encode()))

        asyncio.run(go())

    fuzz()
    asyncio.run(assert_still_serves(hf_server))
    assert 200 in seen and any(400 <= s < 500 for s in seen), seen  # the fuzzer reached both sides


EDGE_BODIES: list[dict[str, Any]] = [
    {"seed": 2**64, "temperature": 1.0},  # beyond torch's generator range
    {"seed": -(2**63) - 1, "temperature": 1.0, "stream": True},
    {"seed": 2**64 - 1, "temperature": 0.5},
    {"max_tokens": 2**63},
    {"prompt": [0, 1, 10**9]},
    {"top_p": 1e-9, "temperature": 5.0},
    {"stop": ["", ""]},
    {"min_tokens": 10**12, "max_tokens": 3},
    {"temperature": 1e-300},
]


@pytest.mark.slow
@pytest.mark.parametrize("edge", EDGE_BODIES, ids=lambda b: ",".join(f"{k}={v}" for k, v in b.items())[:40])
async def test_wrapper_edge_values_are_2xx_or_4xx(hf_server: Server, edge: dict[str, Any]) -> None:
    body = {"model": hf_server.model, "prompt": "hello there", "max_tokens": 3, **edge}
    async with httpx.AsyncClient(base_url=hf_server.base_url, timeout=120, trust_env=False) as client:
        await check_answer(client, "POST", "/v1/completions", json.dumps(body).encode())
    await assert_still_serves(hf_server)


@pytest.mark.slow
def test_wrapper_answers_junk_bytes_methods_and_paths(hf_server: Server) -> None:
    @settings(max_examples=80, deadline=None, suppress_health_check=HEALTH, database=None)
    @given(
        method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]),
        path=st.one_of(st.sampled_from(["/v1/completions", "/v1/chat/completions", "/v1/models", "/health",
                                        "/metrics"]), st.from_regex(r"/[a-z0-9/._-]{0,20}", fullmatch=True)),
        content=st.one_of(st.binary(max_size=64), json_values.map(lambda v: json.dumps(v).encode())),
    )  # fmt: skip
    @example(method="GET", path="////", content=b"")  # a path httpx would read as "//host" if given relative
    def fuzz(method: str, path: str, content: bytes) -> None:
        async def go() -> None:
            async with httpx.AsyncClient(timeout=60, trust_env=False) as client:
                await check_answer(client, method, hf_server.base_url + path, content)

        asyncio.run(go())

    fuzz()
    asyncio.run(assert_still_serves(hf_server))


def test_echo_server_survives_junk_on_the_wire(echo_server: Server) -> None:
    """Raw bytes, not HTTP: a bad request may be answered 400 or the connection closed, never a dead server."""
    host, port = "127.0.0.1", int(echo_server.base_url.rsplit(":", 1)[1])

    @settings(max_examples=120, deadline=None, suppress_health_check=HEALTH, database=None)
    @given(chat=st.booleans(), data=st.data())
    def fuzz_json(chat: bool, data: st.DataObject) -> None:
        body = data.draw(request_body(echo_server.model, chat))
        path = "/v1/chat/completions" if chat else "/v1/completions"
        for key in ("max_tokens", "max_completion_tokens"):
            if isinstance(body.get(key), int | float) and not isinstance(body.get(key), bool):
                body[key] = 2  # echo streams whatever length it is asked for; the fuzz is about shapes, not length

        async def go() -> None:
            async with httpx.AsyncClient(base_url=echo_server.base_url, timeout=30, trust_env=False) as client:
                await check_answer(client, "POST", path, json.dumps(body).encode())

        asyncio.run(go())

    @settings(max_examples=120, deadline=None, suppress_health_check=HEALTH, database=None)
    @given(
        junk=st.one_of(
            st.binary(max_size=200),
            st.builds(lambda m, p, h, b: b"%s %s HTTP/1.1\r\n%s\r\n\r\n%s" % (m, p, h, b),
                      st.sampled_from([b"GET", b"POST", b"BREW"]),
                      st.sampled_from([b"/v1/completions", b"/health", b"/x", b"*"]),
                      st.sampled_from([b"content-length: 5", b"content-length: -1", b"content-length: abc",
                                       b"content-length: 99999999999", b"x", b""]),
                      st.binary(max_size=40)),
        )
    )  # fmt: skip
    def fuzz(junk: bytes) -> None:
        with socket.create_connection((host, port), timeout=5) as sock:
            sock.sendall(junk)
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(2)
            reply = b""
            try:
                while chunk := sock.recv(65536):
                    reply += chunk
            except TimeoutError:
                pass  # waiting for a body that never comes is fine; the server must simply stay up
            if reply:
                status = int(reply.split(b" ", 2)[1])
                assert status < 500, reply[:200]

    log_before = echo_server.log_tail(100_000).count("Traceback")
    fuzz()
    fuzz_json()
    assert echo_server.log_tail(100_000).count("Traceback") == log_before, echo_server.log_tail(30)
    with httpx.Client(base_url=echo_server.base_url, timeout=10, trust_env=False) as client:
        assert client.get("/health").status_code == 200
        ok = client.post("/v1/completions", json={"model": echo_server.model, "prompt": "a b", "max_tokens": 2})
        assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 2
    assert echo_server.alive()
