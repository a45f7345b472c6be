"""The echo calibration server: an OpenAI-compatible endpoint that streams a set number of tokens at a set TTFT and
inter-token delay, so the load generator can be measured against a known truth.

    python -m hpload.servers.echo --port 8100 --ttft-ms 20 --itl-ms 5 --output-tokens 64

It must never be the bottleneck, so it is a raw ``asyncio.Protocol`` (no framework): requests are parsed by hand and
every chunk of a stream is pre-encoded. Token ``i`` of a request that arrived at ``t`` is written at
``t + ttft + i * itl`` on the monotonic loop clock (``call_at``), never after cumulative sleeps, so lateness does not
accumulate. The default asyncio epoll loop rounds its waits up to whole milliseconds; ``--precise`` uses a
``select()`` loop with microsecond waits (for up to ~1000 connections), used by the accuracy benchmark.

Prompt tokens are counted as whitespace-separated words (the load generator's tokenizer-less synthetic prompts are
one word per token). ``/metrics`` serves the server's own TTFT and token counters in Prometheus text format.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import selectors
import signal
from collections.abc import Callable
from typing import Any

_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed"}
_TTFT_BUCKETS_S = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_MAX_HEADER = 64 * 1024
# How hpload hands the key to its echo child: the environment, unlike argv, is not readable by other users (ps).
API_KEY_ENV = "HPLOAD_ECHO_API_KEY"


class EchoConfig:
    def __init__(
        self, ttft_ms: float, itl_ms: float, output_tokens: int, model: str = "echo", api_key: str | None = None
    ) -> None:
        self.ttft_s = ttft_ms / 1000
        self.itl_s = itl_ms / 1000
        self.output_tokens = output_tokens
        self.model = model
        self.api_key = api_key


class EchoStats:
    """What /metrics reports. TTFT here is from the parsed request to the first chunk written."""

    def __init__(self) -> None:
        self.requests = 0
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.ttft_sum_s = 0.0
        self.ttft_buckets = [0] * (len(_TTFT_BUCKETS_S) + 1)

    def observe_ttft(self, seconds: float) -> None:
        self.ttft_sum_s += seconds
        for i, edge in enumerate(_TTFT_BUCKETS_S):
            if seconds <= edge:
                self.ttft_buckets[i] += 1
                return
        self.ttft_buckets[-1] += 1

    def render(self) -> bytes:
        name = "echo:time_to_first_token_seconds"
        lines = [f"# TYPE {name} histogram"]
        cum = 0
        for edge, n in zip(_TTFT_BUCKETS_S, self.ttft_buckets, strict=False):
            cum += n
            lines.append(f'{name}_bucket{{le="{edge}"}} {cum}')
        total = sum(self.ttft_buckets)
        lines += [f'{name}_bucket{{le="+Inf"}} {total}', f"{name}_sum {self.ttft_sum_s}", f"{name}_count {total}"]
        lines += [
            f"echo:prompt_tokens_total {self.prompt_tokens}",
            f"echo:generation_tokens_total {self.generation_tokens}",
            f"echo:request_success_total {self.requests}",
        ]
        return ("\n".join(lines) + "\n").encode()


def _response(status: int, body: bytes, content_type: bytes = b"application/json", close: bool = False) -> bytes:
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\ncontent-length: {len(body)}\r\n"
        f"content-type: {content_type.decode()}\r\n{'connection: close' + chr(13) + chr(10) if close else ''}\r\n"
    )
    return head.encode() + body


def _error(status: int, message: str) -> bytes:
    return _response(status, json.dumps({"error": {"message": message, "type": "invalid_request_error"}}).encode())


def _chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _count_words(body: dict[str, Any]) -> int:
    if "messages" in body:
        return sum(len(str(m.get("content", "")).split()) for m in body["messages"] if isinstance(m, dict))
    prompt = body.get("prompt", "")
    if isinstance(prompt, list):
        return len(prompt) if prompt and isinstance(prompt[0], int) else sum(len(str(p).split()) for p in prompt)
    return len(str(prompt).split())


class EchoProtocol(asyncio.Protocol):
    """One connection: HTTP/1.1 keep-alive, one request at a time."""

    def __init__(self, config: EchoConfig, stats: EchoStats) -> None:
        self.config = config
        self.stats = stats
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.busy = False  # a response is being streamed; later bytes wait in buf
        self.timers: list[asyncio.TimerHandle] = []
        self.close_after = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        for t in self.timers:
            t.cancel()
        self.timers = []
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self._next()

    def _next(self) -> None:
        while not self.busy and self.transport is not None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > _MAX_HEADER:
                    self._send(_error(400, "header too large"), close=True)
                return
            head = self.buf[:end].decode("latin-1").split("\r\n")
            try:
                method, target, _ = head[0].split(" ", 2)
            except ValueError:
                self._send(_error(400, "bad request line"), close=True)
                return
            headers = {}
            for line in head[1:]:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            try:
                length = int(headers.get("content-length", "0") or 0)
            except ValueError:
                length = -1
            if length < 0:
                self._send(_error(400, "bad content-length"), close=True)
                return
            if len(self.buf) < end + 4 + length:
                return  # wait for the rest of the body
            body = self.buf[end + 4 : end + 4 + length]
            self.buf = self.buf[end + 4 + length :]
            self.close_after = headers.get("connection", "").lower() == "close"
            self._handle(method, target.split("?", 1)[0], headers, body)

    def _send(self, data: bytes, close: bool = False) -> None:
        if self.transport is None:
            return
        self.transport.write(data)
        if close or self.close_after:
            self.transport.close()

    def _handle(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> None:
        cfg = self.config
        if path == "/health":
            self._send(_response(200, b""))
            return
        if path == "/metrics":
            self._send(_response(200, self.stats.render(), b"text/plain; version=0.0.4"))
            return
        if cfg.api_key and headers.get("authorization") != f"Bearer {cfg.api_key}":
            self._send(_error(401, "missing or wrong API key"))
            return
        if path == "/v1/models":
            models = {"object": "list", "data": [{"id": cfg.model, "object": "model", "owned_by": "hpload"}]}
            self._send(_response(200, json.dumps(models).encode()))
            return
        if path not in ("/v1/completions", "/v1/chat/completions"):
            self._send(_error(404, f"no route {path}"))
            return
        if method != "POST":
            self._send(_error(405, "use POST"))
            return
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise ValueError("not an object")
            n = int(body.get("max_tokens") or body.get("max_completion_tokens") or cfg.output_tokens)
            if n < 1:
                raise ValueError("max_tokens must be at least 1")
            prompt_tokens = _count_words(body)  # inside the try: messages or prompt of the wrong shape are a 400
            options = body.get("stream_options") or {}
            include_usage = bool(options.get("include_usage"))
        except (ValueError, TypeError, AttributeError) as err:
            self._send(_error(400, f"bad request body: {err}"))
            return
        chat = path.endswith("chat/completions")
        if body.get("stream"):
            self._stream(chat, n, prompt_tokens, include_usage)
        else:
            self._whole(chat, n, prompt_tokens)

    def _usage(self, prompt_tokens: int, n: int) -> dict[str, int]:
        return {"prompt_tokens": prompt_tokens, "completion_tokens": n, "total_tokens": prompt_tokens + n}

    def _stream(self, chat: bool, n: int, prompt_tokens: int, include_usage: bool) -> None:
        cfg, loop = self.config, self.loop
        arrival = loop.time()
        self.busy = True
        obj = "chat.completion.chunk" if chat else "text_completion"
        base: dict[str, Any] = {"id": "echo-1", "object": obj, "created": 0, "model": cfg.model}

        def event(choice_extra: dict[str, Any] | None, usage: dict[str, int] | None = None) -> bytes:
            d = dict(base)
            if choice_extra is not None:
                choice: dict[str, Any] = {"index": 0, **choice_extra}
                d["choices"] = [choice]
            else:
                d["choices"] = []
            if usage is not None:
                d["usage"] = usage
            return b"data: " + json.dumps(d, separators=(",", ":")).encode() + b"\n\n"

        if chat:
            token = _chunk(event({"delta": {"content": " x"}, "finish_reason": None}))
            last = event({"delta": {"content": " x"}, "finish_reason": "length"})
        else:
            token = _chunk(event({"text": " x", "finish_reason": None}))
            last = event({"text": " x", "finish_reason": "length"})
        tail = last
        if include_usage:
            tail += event(None, self._usage(prompt_tokens, n))
        tail = _chunk(tail + b"data: [DONE]\n\n") + b"0\r\n\r\n"
        head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
        stats = self.stats

        def send(i: int) -> None:
            transport = self.transport
            if transport is None:
                return
            if i == 0:
                stats.observe_ttft(loop.time() - arrival)
            if i < n - 1:
                transport.write(head + token if i == 0 else token)
                # Chained, but each deadline is absolute: a late write never delays the ones after it.
                self.timers = [loop.call_at(arrival + cfg.ttft_s + (i + 1) * cfg.itl_s, send, i + 1)]
                return
            transport.write(head + tail if i == 0 else tail)
            stats.requests += 1
            stats.prompt_tokens += prompt_tokens
            stats.generation_tokens += n
            self._done()

        self.timers = [loop.call_at(arrival + cfg.ttft_s, send, 0)]

    def _whole(self, chat: bool, n: int, prompt_tokens: int) -> None:
        cfg, loop = self.config, self.loop
        arrival = loop.time()
        self.busy = True
        text = " x" * n
        choice: dict[str, Any] = {"index": 0, "finish_reason": "length"}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        body = {
            "id": "echo-1",
            "object": "chat.completion" if chat else "text_completion",
            "created": 0,
            "model": cfg.model,
            "choices": [choice],
            "usage": self._usage(prompt_tokens, n),
        }
        payload = _response(200, json.dumps(body).encode())
        stats = self.stats

        def send() -> None:
            stats.observe_ttft(loop.time() - arrival)
            stats.requests += 1
            stats.prompt_tokens += prompt_tokens
            stats.generation_tokens += n
            if self.transport is not None:
                self.transport.write(payload)
            self._done()

        self.timers = [loop.call_at(arrival + cfg.ttft_s + (n - 1) * cfg.itl_s, send)]

    def _done(self) -> None:
        self.timers = []
        self.busy = False
        if self.close_after and self.transport is not None:
            self.transport.close()
            return
        if self.buf:
            self._next()


async def serve_echo(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    ttft_ms: float = 20.0,
    itl_ms: float = 5.0,
    output_tokens: int = 64,
    model: str = "echo",
    api_key: str | None = None,
    ready: Callable[[int], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until ``stop`` is set (or forever). ``ready(port)`` is called once listening (port 0 = a free port)."""
    config = EchoConfig(ttft_ms, itl_ms, output_tokens, model, api_key)
    stats = EchoStats()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: EchoProtocol(config, stats), host, port, backlog=4096)
    bound = server.sockets[0].getsockname()[1]
    if ready is not None:
        ready(bound)
    async with server:
        if stop is None:
            await server.serve_forever()
        else:
            await stop.wait()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hpload.servers.echo", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8100)
    p.add_argument("--ttft-ms", type=float, default=20.0, help="delay from request to first token")
    p.add_argument("--itl-ms", type=float, default=5.0, help="delay between tokens")
    p.add_argument("--output-tokens", type=int, default=64, help="tokens per reply when a request sets no max_tokens")
    p.add_argument("--model", default="echo", help="the model name /v1/models lists")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY'")
    p.add_argument("--precise", action="store_true", help="microsecond timers (select loop, <~1000 connections)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        _parser().error("--host: the echo server binds loopback only; fix: use 127.0.0.1")
    if args.output_tokens < 1 or args.ttft_ms < 0 or args.itl_ms < 0:
        _parser().error("--output-tokens must be >= 1 and --ttft-ms/--itl-ms >= 0")

    def announce(port: int) -> None:
        print(f"echo server on http://{args.host}:{port} (ttft {args.ttft_ms} ms, itl {args.itl_ms} ms)", flush=True)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve_echo(
            args.host, args.port, ttft_ms=args.ttft_ms, itl_ms=args.itl_ms, output_tokens=args.output_tokens,
            model=args.model, api_key=args.api_key or os.environ.get(API_KEY_ENV) or None, ready=announce, stop=stop,
        )  # fmt: skip

    if args.precise:
        runner = asyncio.Runner(loop_factory=lambda: asyncio.SelectorEventLoop(selectors.SelectSelector()))
        with runner:
            runner.run(run())
    else:
        asyncio.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
