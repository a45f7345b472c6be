"""The echo calibration server: OpenAI-compatible replies, max_tokens honoured, usage, auth, and its timing."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hpload.loadgen.sse import SSEDecoder


class EchoProc:
    """``python -m hpload.servers.echo`` on a free port, its output in a log file, its process group killed after."""

    def __init__(self, log: Path, *args: str) -> None:
        self.log = log
        with log.open("w") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hpload.servers.echo", "--port", "0", *args],
                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            m = re.search(r"http://127\.0\.0\.1:(\d+)", log.read_text())
            if m:
                self.url = f"http://127.0.0.1:{m.group(1)}"
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"echo server did not start: {log.read_text()[-500:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


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
    import socket

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
