"""The echo calibration server: OpenAI-compatible replies, max_tokens honoured, usage, auth, and its timing."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import EchoProc

from hpload.loadgen.sse import SSEDecoder


@pytest.fixture(scope="module")
def echo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EchoProc]:
    server = EchoProc(tmp_path_factory.mktemp("echo") / "echo.log", "--ttft-ms", "30", "--itl-ms", "10",
                      "--output-tokens", "5", "--api-key", "k1", "--model", "m1")  # fmt: skip
    try:
        yield server
    finally:
        server.stop()


AUTH = {"Authorization": "Bearer k1"}


def _events(raw: bytes) -> list[str]:
    return [e.data for e in SSEDecoder().feed(raw)]


def test_models_health_and_auth(echo: EchoProc) -> None:
    assert httpx.get(echo.url + "/health").status_code == 200
    assert httpx.get(echo.url + "/v1/models").status_code == 401
    models = httpx.get(echo.url + "/v1/models", headers=AUTH).json()
    assert [m["id"] for m in models["data"]] == ["m1"]
    assert httpx.post(echo.url + "/v1/nowhere", headers=AUTH, json={}).status_code == 404
    assert httpx.post(echo.url + "/v1/completions", headers=AUTH, content=b"{not json").status_code == 400


def test_streamed_completion_honours_max_tokens_and_reports_usage(echo: EchoProc) -> None:
    body = {"model": "m1", "prompt": "one two three", "max_tokens": 7, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    raw = httpx.post(echo.url + "/v1/completions", headers=AUTH, json=body).content
    data = _events(raw)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    texts = [c["choices"][0]["text"] for c in chunks if c["choices"]]
    assert len(texts) == 7
    assert chunks[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 7, "total_tokens": 10}


def test_chat_stream_without_usage_and_default_length(echo: EchoProc) -> None:
    body = {"model": "m1", "messages": [{"role": "user", "content": "hi there"}], "stream": True}
    data = _events(httpx.post(echo.url + "/v1/chat/completions", headers=AUTH, json=body).content)
    chunks = [json.loads(d) for d in data[:-1]]
    assert [c["choices"][0]["delta"]["content"] for c in chunks] == [" x"] * 5
    assert all("usage" not in c for c in chunks)


def test_non_streamed_reply(echo: EchoProc) -> None:
    body = {"model": "m1", "messages": [{"role": "user", "content": "a b c d"}], "max_tokens": 3}
    t0 = time.perf_counter()
    reply = httpx.post(echo.url + "/v1/chat/completions", headers=AUTH, json=body).json()
    elapsed_ms = (time.perf_counter() - t0) * 1000
    assert reply["choices"][0]["message"]["content"] == " x x x"
    assert reply["usage"]["completion_tokens"] == 3 and reply["usage"]["prompt_tokens"] == 4
    assert elapsed_ms >= 30 + 2 * 10 - 1  # ttft + (n-1) * itl


def test_stream_timing_follows_the_schedule(echo: EchoProc) -> None:
    """Token i leaves at ttft + i*itl after arrival: gaps stay ~10 ms, and lateness never accumulates."""
    body = {"model": "m1", "prompt": "x", "max_tokens": 20, "stream": True}
    stamps: list[int] = []
    with httpx.Client() as client:
        t0 = time.perf_counter_ns()
        with client.stream("POST", echo.url + "/v1/completions", headers=AUTH, json=body) as resp:
            dec = SSEDecoder()
            for chunk in resp.iter_raw():
                now = time.perf_counter_ns()
                stamps += [now for e in dec.feed(chunk) if e.data != "[DONE]"]
    assert len(stamps) == 20
    ttft_ms = (stamps[0] - t0) / 1e6
    last_ms = (stamps[-1] - t0) / 1e6
    assert 29 <= ttft_ms < 30 + 25, ttft_ms  # generous upper bound: the machine is shared
    # The last token is due at 30 + 19*10 = 220 ms; absolute deadlines keep it there rather than 20 x late.
    assert 219 <= last_ms < 220 + 25, last_ms


def test_pipelined_and_closed_connections(echo: EchoProc) -> None:
    host, port = echo.url.removeprefix("http://").split(":")
    body = b'{"prompt": "a", "max_tokens": 1}'
    req = (
        f"POST /v1/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer k1\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode() + body
    last = req.replace(b"host: x\r\n", b"host: x\r\nconnection: close\r\n")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(req + last)  # two requests in one write: answered in order, then closed
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    assert got.count(b"HTTP/1.1 200 OK") == 2


# --- timing truth: kernel arrival, write lateness, trace ---------------------------------------------------------

TTFT_NS, ITL_NS = 30_000_000, 10_000_000
# Kernel receive stamps on loopback were seen up to ~10 us before the sender's own clock read just before send():
# comparisons of a server arrival with a client stamp allow 1 ms, far more than that and far less than the 30 ms TTFT.
STAMP_SLACK_NS = 1_000_000


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EchoProc]:
    """The accuracy benchmark's setup: the --precise loop, with a trace file."""
    tmp = tmp_path_factory.mktemp("traced")
    server = EchoProc(tmp / "echo.log", "--precise", "--ttft-ms", "30", "--itl-ms", "10", "--output-tokens", "5",
                      trace=tmp / "trace.jsonl")  # fmt: skip
    try:
        yield server
    finally:
        server.stop()


def _trace(server: EchoProc, ids: set[str], timeout_s: float = 10.0) -> dict[str, dict[str, Any]]:
    """The trace lines with these ids, waiting for the server's periodic flush."""
    deadline = time.monotonic() + timeout_s
    while True:
        assert server.trace is not None
        text = server.trace.read_text()
        complete = text[: text.rfind("\n") + 1]  # a line the server is still writing is not read yet
        lines = [json.loads(line) for line in complete.splitlines()]
        found = {rec["id"]: rec for rec in lines if rec["id"] in ids}
        if set(found) == ids or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def _metrics(url: str) -> dict[str, float]:
    out = {}
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def _assert_on_schedule(rec: dict[str, Any], tokens: int) -> None:
    writes = rec["write_ns"]
    assert len(writes) == tokens, rec
    for i, at in enumerate(writes):
        due = rec["arrival_ns"] + TTFT_NS + i * ITL_NS
        assert at >= due, f"write {i} of {rec['id']} was {(due - at) / 1e3:.1f} us early"


def test_trace_and_lateness_histogram_cover_every_write(traced: EchoProc) -> None:
    before = _metrics(traced.url)
    lengths = {f"req-{i}": 3 + i for i in range(6)}
    sent: dict[str, tuple[int, int]] = {}

    async def one(client: httpx.AsyncClient, rid: str) -> None:
        body = {"prompt": "a b", "max_tokens": lengths[rid], "stream": True}
        t0 = time.perf_counter_ns()
        async with client.stream("POST", "/v1/completions", json=body, headers={"x-request-id": rid}) as resp:
            got = b"".join([chunk async for chunk in resp.aiter_raw()])
        sent[rid] = (t0, time.perf_counter_ns())
        assert sum(1 for e in _events(got) if e != "[DONE]") == lengths[rid]

    async def all_of_them() -> None:
        async with httpx.AsyncClient(base_url=traced.url, timeout=30) as client:
            await asyncio.gather(*(one(client, rid) for rid in lengths))

    asyncio.run(all_of_them())
    after = _metrics(traced.url)
    name = "echo:write_lateness_seconds"
    count = after[f"{name}_count"] - before.get(f"{name}_count", 0)
    assert count == sum(lengths.values())
    assert after[f'{name}_bucket{{le="+Inf"}}'] == after[f"{name}_count"]
    edges = [after[k] for k in after if k.startswith(f"{name}_bucket")]
    assert edges == sorted(edges) and len(edges) == 11
    assert 0 < after["echo:write_lateness_p50_seconds"] <= after["echo:write_lateness_p99_seconds"]
    # The gauges come from an HdrHistogram in whole microseconds; the max is exact.
    assert after["echo:write_lateness_p99_seconds"] <= after["echo:write_lateness_max_seconds"] + 1e-6
    assert after["echo:write_lateness_max_seconds"] <= after[f"{name}_sum"]

    trace = _trace(traced, set(lengths))
    assert set(trace) == set(lengths)
    for rid, rec in trace.items():
        _assert_on_schedule(rec, lengths[rid])
        t0, t1 = sent[rid]
        assert t0 - STAMP_SLACK_NS <= rec["arrival_ns"] <= t1, (rid, rec["arrival_ns"] - t0)


def test_request_in_pieces_starts_at_its_last_piece(traced: EchoProc) -> None:
    host, port = traced.url.removeprefix("http://").split(":")
    body = b'{"prompt": "a b", "max_tokens": 3, "stream": true}'
    pieces = [
        b"POST /v1/completions HTTP/1.1\r\nhost: x\r\n",
        b"x-request-id: pieces\r\ncontent-length: %d\r\n\r\n" % len(body),
        body[:10],
        body[10:],
    ]
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for piece in pieces[:-1]:
            s.sendall(piece)
            time.sleep(0.04)  # 120 ms in all: a schedule started by an earlier piece would answer at once
        t_last = time.perf_counter_ns()
        s.sendall(pieces[-1])
        got = b""
        first_ns = 0
        while not got.endswith(b"0\r\n\r\n"):
            chunk = s.recv(65536)
            assert chunk, got
            got += chunk
            if not first_ns and b"data: " in got:
                first_ns = time.perf_counter_ns()
    assert b"HTTP/1.1 200 OK" in got and got.count(b'"text":" x"') == 3
    assert first_ns - t_last >= TTFT_NS, (first_ns - t_last) / 1e6
    rec = _trace(traced, {"pieces"})["pieces"]
    assert rec["arrival_ns"] >= t_last - STAMP_SLACK_NS, (t_last - rec["arrival_ns"]) / 1e6
    _assert_on_schedule(rec, 3)


def test_pipelined_request_starts_when_the_one_before_ends(traced: EchoProc) -> None:
    host, port = traced.url.removeprefix("http://").split(":")
    body = b'{"prompt": "a", "max_tokens": 4, "stream": true}'

    def req(rid: bytes, close: bool) -> bytes:
        extra = b"connection: close\r\n" if close else b""
        return b"POST /v1/completions HTTP/1.1\r\nx-request-id: %s\r\n%scontent-length: %d\r\n\r\n%s" % (
            rid, extra, len(body), body)  # fmt: skip

    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(req(b"pipe-1", False) + req(b"pipe-2", True))
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    assert got.count(b"HTTP/1.1 200 OK") == 2
    trace = _trace(traced, {"pipe-1", "pipe-2"})
    _assert_on_schedule(trace["pipe-1"], 4)
    _assert_on_schedule(trace["pipe-2"], 4)
    assert trace["pipe-2"]["arrival_ns"] >= trace["pipe-1"]["write_ns"][-1]


def test_client_gone_mid_stream_leaves_the_server_serving(traced: EchoProc) -> None:
    host, port = traced.url.removeprefix("http://").split(":")
    body = b'{"prompt": "a", "max_tokens": 50, "stream": true}'
    before = _metrics(traced.url)
    for rid, reset in ((b"gone-fin", False), (b"gone-rst", True)):
        s = socket.create_connection((host, int(port)), timeout=5)
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nx-request-id: %s\r\ncontent-length: %d\r\n\r\n%s"
                  % (rid, len(body), body))  # fmt: skip
        assert b"data: " in s.recv(65536)
        if reset:  # linger 0: close() sends RST, the server's next send or read fails with ECONNRESET
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    time.sleep(0.1)  # several inter-token delays: timers that were not cancelled would write to a dead socket
    body2 = {"prompt": "a", "max_tokens": 6, "stream": True}
    data = _events(httpx.post(traced.url + "/v1/completions", json=body2, headers={"x-request-id": "after"}).content)
    assert len(data) == 7 and data[-1] == "[DONE]"
    after = _metrics(traced.url)
    # One chunk to each client that left (the next was 10 ms away; one more allowed for a stalled machine) and the
    # later request's 6: timers are cancelled when the client goes, not left to run against a dead socket.
    written = after["echo:write_lateness_seconds_count"] - before["echo:write_lateness_seconds_count"]
    assert 8 <= written <= 9, written
    assert after["echo:request_success_total"] - before["echo:request_success_total"] == 1
    assert _trace(traced, {"after"})
    assert _trace(traced, {"gone-fin", "gone-rst"}, timeout_s=0) == {}  # unfinished streams leave no trace line
    assert "Traceback" not in traced.log.read_text()


def test_trace_is_flushed_on_sigterm(tmp_path: Path) -> None:
    trace = tmp_path / "trace.jsonl"
    server = EchoProc(tmp_path / "echo.log", "--ttft-ms", "1", "--itl-ms", "1", trace=trace)
    try:
        body = {"prompt": "a", "max_tokens": 2, "stream": True}
        httpx.post(server.url + "/v1/completions", json=body, headers={"x-request-id": "last"}).raise_for_status()
        httpx.post(server.url + "/v1/completions", json=body).raise_for_status()
    finally:
        server.stop()  # well inside the 1 s flush period
    lines = [json.loads(line) for line in trace.read_text().splitlines()]
    assert [rec["id"] for rec in lines] == ["last", None]
    assert server.proc.returncode == 0


def test_bad_trace_path_is_one_line(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "hpload.servers.echo", "--trace", str(tmp_path / "no" / "t.jsonl")],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 2
    assert "--trace" in done.stderr and "Traceback" not in done.stderr


def test_launched_echo_is_precise_and_traces_by_default_settings(tmp_path: Path) -> None:
    from hpload.servers.echo.launcher import EchoServer
    from hpload.servers.settings import EchoSettings

    trace = tmp_path / "launched.jsonl"
    settings = EchoSettings(ttft_ms=1, itl_ms=1, trace=str(trace))
    argv = EchoServer(settings).argv(0)
    assert "--precise" in argv and str(trace) in argv
    assert "--precise" not in EchoServer(EchoSettings(precise=False)).argv(0)

    async def one_request() -> None:
        async with EchoServer(settings, workdir=tmp_path) as server:
            async with httpx.AsyncClient() as client:
                body = {"prompt": "a", "max_tokens": 3, "stream": True}
                reply = await client.post(server.base_url + "/v1/completions", json=body, headers={"x-request-id": "r1"})
                reply.raise_for_status()

    asyncio.run(one_request())  # leaving the context stops the server, which flushes its trace
    (line,) = [json.loads(raw) for raw in trace.read_text().splitlines()]
    assert line["id"] == "r1" and len(line["write_ns"]) == 3
