"""The echo calibration server: an OpenAI-compatible endpoint that streams a set number of tokens at a set TTFT and
inter-token delay, so the load generator can be measured against a known truth.

    python -m hpload.servers.echo --port 8100 --ttft-ms 20 --itl-ms 5 --output-tokens 64 [--precise] [--trace FILE]

It must never be the bottleneck and must know its own error, so it has no framework and no asyncio transports: raw
non-blocking sockets driven by ``loop.add_reader``/``add_writer``, requests parsed by hand, every chunk pre-encoded
and handed to ``socket.send`` at once. A request's arrival is the kernel's receive stamp of the read that completed
it (``hpload.netstamp``), not the moment the loop got round to reading it: while the server writes a burst of chunks
for hundreds of streams, a request that came in meanwhile still starts its schedule on time. Token ``i`` is written
at ``arrival + ttft + i * itl`` on the monotonic loop clock (``call_at``), never after cumulative sleeps, so lateness
does not accumulate. The default asyncio epoll loop rounds its waits up to whole milliseconds; ``--precise`` waits
with microsecond ``select()`` timeouts (on Linux on the epoll descriptor alone, so a wake-up costs the same at any
number of connections), takes the kernel's 50 us timer slack down to 1 ns, and is what the accuracy benchmark uses.

The server reports its own share of the error: every timed write's lateness (send time minus scheduled time) goes to
``/metrics`` (``echo:write_lateness_seconds`` histogram, plus p50/p99 gauges to the microsecond and the exact max),
and ``--trace FILE`` writes one JSON line per finished stream: ``{"id": x-request-id or null, "arrival_ns": int,
"write_ns": [int, ...]}`` in ``time.perf_counter_ns`` units (CLOCK_MONOTONIC on Linux: comparable with a client's own
stamps on the same host).

Prompt tokens are counted as whitespace-separated words (the load generator's tokenizer-less synthetic prompts are
one word per token). ``/metrics`` also serves the server's TTFT (first write minus arrival) and token counters.
"""

# Over ~500 lines on purpose: the echo server is one timing instrument (socket I/O, request parsing, timed writes,
# its lateness metrics and trace), and each layer's cost shows in the others' error; it is kept whole so a reader
# sees every step between a kernel arrival stamp and the write that answers it.
from __future__ import annotations

import argparse
import asyncio
import contextvars
import errno
import gc
import importlib
import json
import os
import select
import selectors
import signal
import socket
import sys
from array import array
from collections.abc import Callable
from pathlib import Path
from time import perf_counter_ns
from typing import TYPE_CHECKING, Any

from hpload import netstamp
from hpload.servers.echo import batching as echo_batching
from hpload.servers.echo import chunks as echo_chunks

if TYPE_CHECKING:
    from hpload.loadgen.hist import LatencyHistogram

_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed"}
_TTFT_BUCKETS_S = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_LATE_BUCKETS_S = (1e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 5e-2)
_LATE_BUCKETS_NS = tuple(round(edge * 1e9) for edge in _LATE_BUCKETS_S)
_MAX_HEADER = 64 * 1024
_STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n"
    b"\r\n"
)
# recvmsg allocates the whole buffer for every read: 256 KiB (asyncio's size) measured 18 us a read here, 64 KiB 5 us.
_READ_BYTES = 64 * 1024
_ACCEPTS_PER_WAKE = 256
# FD_SETSIZE: on a plain select() loop (a caller of serve_echo may run one) a higher descriptor makes select() raise,
# which would stop the whole loop; such a connection is refused instead.
_SELECT_FD_LIMIT = 1024
_FOLD_EVERY_S = 0.25
# Values binned per loop turn. HdrHistogram's flush took ~50 us for 4k values but ~600 us for 13k (one second of
# writes at 256 streams): past ~100 KB numpy's temporaries leave the small-allocation pools.
_FOLD_SLICE = 2048
_TRACE_EVERY_FOLDS = 4  # the trace file is written every second
_PR_SET_TIMERSLACK = 29  # linux/prctl.h
_TRACE_SLICE = 8  # lines formatted per loop turn (~50 us): a timer that falls due waits one slice at most
# How hpload hands the key to its echo child: the environment, unlike argv, is not readable by other users (ps).
API_KEY_ENV = "HPLOAD_ECHO_API_KEY"


class EchoConfig:
    def __init__(
        self, ttft_ms: float, itl_ms: float, output_tokens: int, model: str = "echo", api_key: str | None = None,
        chunks: str = "plain",
    ) -> None:
        self.ttft_s = ttft_ms / 1000
        self.itl_s = itl_ms / 1000
        # Deadlines are integer ns on perf_counter_ns's clock: float seconds near 1e5 s would lose ~10 ns per step.
        self.ttft_ns = round(ttft_ms * 1e6)
        self.itl_ns = round(itl_ms * 1e6)
        self.output_tokens = output_tokens
        self.model = model
        self.api_key = api_key
        self.chunks = chunks  # a chunk pattern of hpload.servers.echo.chunks, for golden tests
        self.batching: echo_batching.BatchingModel | None = None  # batching mode: see echo.batching


class EchoStats:
    """What /metrics reports. TTFT is from the request's kernel arrival to its first write; lateness is per write."""

    def __init__(self) -> None:
        # Deferred: hist pulls numpy, hdrh and the loadgen package, which echo.launcher (imported for API_KEY_ENV)
        # does not need.
        import numpy as np

        from hpload.loadgen.hist import LatencyHistogram

        self.requests = 0
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.ttft_sum_s = 0.0
        self.ttft_buckets = [0] * (len(_TTFT_BUCKETS_S) + 1)
        # The write path only appends here (one C call); fold_lateness bins it with numpy off the write path.
        self.late_pending_ns: array[int] = array("q")
        self.late_buckets = [0] * (len(_LATE_BUCKETS_S) + 1)
        self.late_sum_ns = 0
        self.late_max_ns = 0
        self.late_hist: LatencyHistogram = LatencyHistogram()
        self.late_edges_ns = np.array(_LATE_BUCKETS_NS, dtype=np.int64)

    def observe_ttft(self, seconds: float) -> None:
        self.ttft_sum_s += seconds
        for i, edge in enumerate(_TTFT_BUCKETS_S):
            if seconds <= edge:
                self.ttft_buckets[i] += 1
                return
        self.ttft_buckets[-1] += 1

    def fold_lateness(self, one_slice: bool = False) -> bool:
        """Bin the pending values, in slices of ``_FOLD_SLICE`` (only the first with ``one_slice``); True while more
        wait."""
        import numpy as np

        while self.late_pending_ns:
            pending = self.late_pending_ns
            if len(pending) <= _FOLD_SLICE:
                chunk, self.late_pending_ns = pending, array("q")
            else:
                chunk = pending[:_FOLD_SLICE]
                del pending[:_FOLD_SLICE]
            values = np.frombuffer(chunk, dtype=np.int64)
            # side="left": a value equal to an edge belongs to that edge's bucket (Prometheus buckets are "<= le").
            index = np.searchsorted(self.late_edges_ns, values, side="left")
            for i, n in enumerate(np.bincount(index, minlength=len(self.late_buckets)).tolist()):
                self.late_buckets[i] += n
            self.late_sum_ns += int(values.sum())
            self.late_max_ns = max(self.late_max_ns, int(values.max()))
            micros: array[int] = array("q")
            micros.frombytes((values // 1000).tobytes())
            self.late_hist.extend_us(micros)
            self.late_hist.flush()
            if one_slice:
                break
        return bool(self.late_pending_ns)

    def finished(self, prompt_tokens: int, output_tokens: int) -> None:
        self.requests += 1
        self.prompt_tokens += prompt_tokens
        self.generation_tokens += output_tokens

    def render(self) -> bytes:
        lines = _histogram("echo:time_to_first_token_seconds", _TTFT_BUCKETS_S, self.ttft_buckets, self.ttft_sum_s)
        self.fold_lateness()  # in slices too, but all of them: /metrics must count every write so far
        lines += _histogram("echo:write_lateness_seconds", _LATE_BUCKETS_S, self.late_buckets, self.late_sum_ns / 1e9)
        p50_us, p99_us = self.late_hist.percentiles_us((50, 99))
        max_s = self.late_max_ns / 1e9
        # A histogram percentile is its bucket's upper edge (4 us wide at 5 ms): never report one above the max.
        for label, value_s in (("p50", min(p50_us / 1e6, max_s)), ("p99", min(p99_us / 1e6, max_s)), ("max", max_s)):
            lines += [
                f"# TYPE echo:write_lateness_{label}_seconds gauge",
                f"echo:write_lateness_{label}_seconds {value_s}",
            ]
        lines += [
            f"echo:prompt_tokens_total {self.prompt_tokens}",
            f"echo:generation_tokens_total {self.generation_tokens}",
            f"echo:request_success_total {self.requests}",
        ]
        return ("\n".join(lines) + "\n").encode()


def _histogram(name: str, edges: tuple[float, ...], counts: list[int], total_s: float) -> list[str]:
    """A Prometheus histogram: cumulative buckets (the last count is the +Inf overflow), sum and count."""
    lines = [f"# TYPE {name} histogram"]
    cum = 0
    for edge, n in zip(edges, counts, strict=False):
        cum += n
        lines.append(f'{name}_bucket{{le="{edge}"}} {cum}')
    total = sum(counts)
    return [*lines, f'{name}_bucket{{le="+Inf"}} {total}', f"{name}_sum {total_s}", f"{name}_count {total}"]


class TraceWriter:
    """``--trace``: finished streams are kept as tuples and turned into JSON lines only at flush time, in slices."""

    def __init__(self, path: str | Path) -> None:
        self.fh = open(path, "w", encoding="utf-8", buffering=1 << 20)
        self.pending: list[tuple[str | None, int, list[int]]] = []
        self.sent: dict[int, list[int]] = {}  # id(write_ns) -> stamps just after each send() (chunk patterns only)

    def add(self, request_id: str | None, arrival_ns: int, write_ns: list[int], sent_ns: list[int] | None = None) -> None:
        self.pending.append((request_id, arrival_ns, write_ns))
        if sent_ns is not None:
            self.sent[id(write_ns)] = sent_ns

    def write_some(self, limit: int) -> bool:
        """Format and write up to ``limit`` lines; True while more wait."""
        batch, self.pending = self.pending[:limit], self.pending[limit:]
        self.fh.write(
            "".join(
                f'{{"id":{json.dumps(rid)},"arrival_ns":{arrival},"write_ns":[{",".join(map(str, writes))}]'
                + (f',"sent_ns":[{",".join(map(str, self.sent.pop(id(writes))))}]' if self.sent else "")
                + "}\n"
                for rid, arrival, writes in batch
            )
        )
        return bool(self.pending)

    def flush(self) -> None:
        self.fh.flush()

    def close(self) -> None:
        while self.write_some(1024):
            pass
        self.fh.close()


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


class _Shared:
    """What every connection of one server needs."""

    def __init__(self, config: EchoConfig, stats: EchoStats, trace: TraceWriter | None) -> None:
        self.config = config
        self.stats = stats
        self.trace = trace
        self.loop = asyncio.get_running_loop()
        self.conns: set[EchoConnection] = set()
        # One context for every timer: call_at would otherwise copy the context for each of ~13k writes a second.
        self.context = contextvars.copy_context()
        self._chunks: dict[bool, tuple[bytes, bytes]] = {}
        self.batcher = echo_batching.Batcher(config.batching, self.call_at) if config.batching else None

    def call_at(self, due_ns: int, callback: Callable[[], None]) -> asyncio.TimerHandle:
        return self.loop.call_at(due_ns / 1e9, callback, context=self.context)

    def chunks(self, chat: bool) -> tuple[bytes, bytes]:
        """The encoded token chunk and the last token's event: the same for every request of a kind."""
        if chat not in self._chunks:
            model = self.config.model
            if chat:
                token = _event(model, chat, {"delta": {"content": " x"}, "finish_reason": None})
                last = _event(model, chat, {"delta": {"content": " x"}, "finish_reason": "length"})
            else:
                token = _event(model, chat, {"text": " x", "finish_reason": None})
                last = _event(model, chat, {"text": " x", "finish_reason": "length"})
            self._chunks[chat] = (_chunk(token), last)
        return self._chunks[chat]


class EchoConnection:
    """One accepted socket: HTTP/1.1 keep-alive, one request at a time; pipelined bytes wait in ``buf``."""

    def __init__(self, sock: socket.socket, shared: _Shared) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.shared = shared
        self.loop = shared.loop
        self.stamped = netstamp.enable(sock)
        self.buf = b""
        self.read_ns = 0  # kernel arrival of the newest bytes read
        self.free_ns = 0  # when this connection's last timed response finished: a pipelined request starts no earlier
        self.busy = False  # a response is being timed; later requests wait in buf
        self.timer: asyncio.TimerHandle | None = None
        self.out = bytearray()  # what the kernel did not take yet; later writes queue behind it
        self.close_after = False
        self.closing = False  # no more requests: close once out is flushed
        self.closed = False
        shared.conns.add(self)
        self.loop.add_reader(self.fd, self._on_readable)

    # --- socket events -------------------------------------------------------------------------------------------

    def _on_readable(self) -> None:
        if self.closed:
            return
        try:
            data, stamp_ns = netstamp.recv(self.sock, _READ_BYTES, self.stamped)
        except BlockingIOError:
            return
        except OSError:  # ECONNRESET and the like: the client is gone, nothing is left to answer
            self.abort()
            return
        if not data:
            # As asyncio's default eof_received: answers already written still go out, a stream in progress stops.
            self._finish()
            return
        self.read_ns = stamp_ns
        self.buf += data
        if not self.busy:
            try:
                self._next()
            except BaseException:
                self.abort()  # a parser bug costs this connection, not the server; the loop logs the traceback
                raise

    def _on_writable(self) -> None:
        if self.closed:
            return
        try:
            sent = self.sock.send(self.out)
        except BlockingIOError:
            return
        except OSError:
            self.abort()
            return
        del self.out[:sent]
        if not self.out:
            self.loop.remove_writer(self.fd)
            if self.closing:
                self.abort()

    def _write(self, data: bytes) -> None:
        if self.closed:
            return
        if self.out:
            self.out += data
            return
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.abort()
            return
        if sent < len(data):
            self.out += memoryview(data)[sent:]
            self.loop.add_writer(self.fd, self._on_writable)

    def _finish(self) -> None:
        """Read no more; close once what was written has left."""
        if self.closed:
            return
        self.closing = True
        self._cancel_timer()
        self.loop.remove_reader(self.fd)
        if not self.out:
            self.abort()

    def abort(self) -> None:
        """Close now, dropping unsent bytes and any timed write still to come."""
        if self.closed:
            return
        self.closed = True
        self._cancel_timer()
        self.loop.remove_reader(self.fd)
        self.loop.remove_writer(self.fd)
        self.sock.close()
        self.shared.conns.discard(self)

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    # --- HTTP ------------------------------------------------------------------------------------------------------

    def _next(self) -> None:
        while not self.busy and not self.closing and not self.closed:
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
        self._write(data)
        if close or self.close_after:
            self._finish()

    def _handle(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> None:
        cfg = self.shared.config
        if path == "/health":
            self._send(_response(200, b""))
            return
        if path == "/metrics":
            text = self.shared.stats.render()
            if self.shared.batcher is not None:
                text += echo_batching.gauges(self.shared.batcher)
            self._send(_response(200, text, b"text/plain; version=0.0.4"))
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
        except (ValueError, TypeError, AttributeError, OverflowError, RecursionError) as err:
            # OverflowError: max_tokens 1e400 parses as inf; RecursionError: JSON nested past the parser's limit.
            self._send(_error(400, f"bad request body: {err}"))
            return
        chat = path.endswith("chat/completions")
        # Bytes that were complete while an earlier response was still timed could not start before it ended.
        arrival_ns = max(self.read_ns, self.free_ns)
        if body.get("stream") and cfg.chunks != "plain":
            writes = echo_chunks.plan(cfg.chunks, chat, n, include_usage, bool(body.get("return_token_ids")),
                                      prompt_tokens, cfg.model)  # fmt: skip
            self.busy = True
            # Traced with each write's after-send stamp too, so a golden test can bracket it.
            _Stream(self, sum(w.tokens for w in writes), echo_chunks.payloads(writes, _chunk), arrival_ns,
                    headers.get("x-request-id"), prompt_tokens, sent=True).start()  # fmt: skip
        elif body.get("stream"):
            self._stream(chat, n, prompt_tokens, include_usage, arrival_ns, headers.get("x-request-id"))
        else:
            self._whole(chat, n, prompt_tokens, arrival_ns)

    def _usage(self, prompt_tokens: int, n: int) -> dict[str, int]:
        return {"prompt_tokens": prompt_tokens, "completion_tokens": n, "total_tokens": prompt_tokens + n}

    def _stream(
        self, chat: bool, n: int, prompt_tokens: int, include_usage: bool, arrival_ns: int, request_id: str | None
    ) -> None:
        shared = self.shared
        self.busy = True
        token, last = shared.chunks(chat)
        tail = last
        if include_usage:
            tail += _event(shared.config.model, chat, None, self._usage(prompt_tokens, n))
        tail = _chunk(tail + b"data: [DONE]\n\n") + b"0\r\n\r\n"
        if shared.batcher is not None:
            shared.batcher.submit(echo_batching.BatchedStream(
                self, n, prompt_tokens, arrival_ns, head=_STREAM_HEAD, token=token, tail=tail, request_id=request_id))
            return
        _Stream(self, n, [token] * (n - 1) + [tail], arrival_ns, request_id, prompt_tokens).start()

    def _whole(self, chat: bool, n: int, prompt_tokens: int, arrival_ns: int) -> None:
        cfg = self.shared.config
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
        if self.shared.batcher is not None:
            self.shared.batcher.submit(echo_batching.BatchedStream(self, n, prompt_tokens, arrival_ns, payload=payload))
            return
        _Whole(self, n, payload, arrival_ns, prompt_tokens).start()

    def _done(self) -> None:
        self.timer = None
        self.busy = False
        self.free_ns = perf_counter_ns()
        if self.closed:
            return
        if self.close_after:
            self._finish()
            return
        if self.buf:
            try:
                self._next()
            except BaseException:
                self.abort()
                raise


def _event(model: str, chat: bool, choice_extra: dict[str, Any] | None, usage: dict[str, int] | None = None) -> bytes:
    d: dict[str, Any] = {"id": "echo-1", "object": "chat.completion.chunk" if chat else "text_completion", "created": 0}
    d["model"] = model
    d["choices"] = [{"index": 0, **choice_extra}] if choice_extra is not None else []
    if usage is not None:
        d["usage"] = usage
    return b"data: " + json.dumps(d, separators=(",", ":")).encode() + b"\n\n"


class _Stream:
    """One streamed reply's timed writes: ``payloads[i]`` at ``arrival + ttft + i * itl`` (``n`` tokens in all; a
    ``--chunks`` pattern may carry several, or none, in one write).

    An object with slots rather than a closure: a closure that re-arms itself is a reference cycle per request, and
    collecting thousands of them (with their cells) paused the loop ~0.5 ms at a time while serving.
    """

    __slots__ = ("arrival_ns", "conn", "first_ns", "i", "n", "payloads", "prompt_tokens", "request_id", "sent",
                 "writes")  # fmt: skip

    def __init__(
        self, conn: EchoConnection, n: int, payloads: list[bytes], arrival_ns: int, request_id: str | None,
        prompt_tokens: int, sent: bool = False,
    ) -> None:  # fmt: skip
        self.conn = conn
        self.n = n
        self.payloads = payloads
        self.arrival_ns = arrival_ns
        self.first_ns = arrival_ns + conn.shared.config.ttft_ns
        self.request_id = request_id
        self.prompt_tokens = prompt_tokens
        self.i = 0
        self.writes: list[int] | None = [] if conn.shared.trace is not None else None
        # Just after each send(): a write reached the peer's kernel between the two stamps (on loopback the receive
        # stamp is taken inside send()), so a golden test can bracket it even when this process was preempted.
        self.sent: list[int] | None = [] if sent and self.writes is not None else None

    def start(self) -> None:
        self.conn.timer = self.conn.shared.call_at(self.first_ns, self.send)

    def send(self) -> None:
        conn = self.conn
        if conn.closed:
            return
        shared = conn.shared
        i = self.i
        due_ns = self.first_ns + i * shared.config.itl_ns
        now = perf_counter_ns()
        if now < due_ns:
            # The loop compares float seconds and may wake a few ns early: a write is never early.
            conn.timer = shared.call_at(due_ns, self.send)
            return
        data = self.payloads[i]
        conn._write(_STREAM_HEAD + data if i == 0 else data)
        if self.sent is not None:
            self.sent.append(perf_counter_ns())
        # Bookkeeping after the send, so that `now` stays the moment just before it.
        stats = shared.stats
        stats.late_pending_ns.append(now - due_ns)
        if self.writes is not None:
            self.writes.append(now)
        if i == 0:
            stats.observe_ttft((now - self.arrival_ns) / 1e9)
        if i < len(self.payloads) - 1:
            if not conn.closed:
                self.i = i + 1
                # Chained, but each deadline is absolute: a late write never delays the ones after it.
                conn.timer = shared.call_at(due_ns + shared.config.itl_ns, self.send)
            return
        stats.finished(self.prompt_tokens, self.n)
        if shared.trace is not None and self.writes is not None and not conn.closed:  # closed: the last send failed
            shared.trace.add(self.request_id, self.arrival_ns, self.writes, self.sent)
        conn._done()


class _Whole:
    """A non-streamed reply: one timed write when the last token would have been due."""

    __slots__ = ("arrival_ns", "conn", "due_ns", "n", "payload", "prompt_tokens")

    def __init__(self, conn: EchoConnection, n: int, payload: bytes, arrival_ns: int, prompt_tokens: int) -> None:
        cfg = conn.shared.config
        self.conn = conn
        self.n = n
        self.payload = payload
        self.arrival_ns = arrival_ns
        self.due_ns = arrival_ns + cfg.ttft_ns + (n - 1) * cfg.itl_ns
        self.prompt_tokens = prompt_tokens

    def start(self) -> None:
        self.conn.timer = self.conn.shared.call_at(self.due_ns, self.send)

    def send(self) -> None:
        conn = self.conn
        if conn.closed:
            return
        now = perf_counter_ns()
        if now < self.due_ns:
            conn.timer = conn.shared.call_at(self.due_ns, self.send)
            return
        conn._write(self.payload)
        stats = conn.shared.stats
        stats.late_pending_ns.append(now - self.due_ns)
        stats.observe_ttft((now - self.arrival_ns) / 1e9)
        stats.finished(self.prompt_tokens, self.n)
        conn._done()


def _listen(host: str, port: int) -> list[socket.socket]:
    """Bind every address ``host`` names (as ``create_server`` did), on one port even when ``port`` is 0."""
    listeners: list[socket.socket] = []
    seen: set[tuple[int, str]] = set()
    try:
        for family, kind, proto, _, addr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                               flags=socket.AI_PASSIVE):  # fmt: skip
            key = (int(family), str(addr[0]))
            if key in seen:
                continue
            seen.add(key)
            sock = socket.socket(family, kind, proto)
            listeners.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            bound = listeners[0].getsockname()[1] if len(listeners) > 1 else port
            sock.bind((addr[0], bound, *addr[2:]))
            sock.listen(4096)
            sock.setblocking(False)
            # On the listener too: it switches the kernel's stamping on before the first client, so a request that
            # lands before accept() is stamped, and accepted sockets inherit the option.
            netstamp.enable(sock)
    except BaseException:
        for sock in listeners:
            sock.close()
        raise
    return listeners


def _accept(listener: socket.socket, shared: _Shared, fd_limit: int | None) -> None:
    loop = shared.loop
    for _ in range(_ACCEPTS_PER_WAKE):
        try:
            conn, _addr = listener.accept()
        except (BlockingIOError, ConnectionAbortedError):
            return
        except OSError as err:
            if err.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                raise
            # Out of descriptors: the listener stays readable, so pause for a second instead of spinning on it.
            print(f"echo server: accept failed ({err.strerror}); pausing accepts for 1 s", file=sys.stderr, flush=True)
            loop.remove_reader(listener.fileno())
            loop.call_later(1.0, loop.add_reader, listener.fileno(), _accept, listener, shared, fd_limit)
            return
        if fd_limit is not None and conn.fileno() >= fd_limit:
            conn.close()
            continue
        try:
            conn.setblocking(False)
            # Nagle would hold a chunk back until the previous one is acknowledged: a whole ITL of error.
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # reset between accept() and here
            conn.close()
            continue
        EchoConnection(conn, shared)


async def _housekeeping(stats: EchoStats, trace: TraceWriter | None) -> None:
    """Fold lateness (bounds its buffer when nobody scrapes /metrics) and write the trace, in slices: timers that
    fall due meanwhile run between two slices."""
    turns = 0
    while True:
        await asyncio.sleep(_FOLD_EVERY_S)
        while True:
            more = stats.fold_lateness(one_slice=True)
            if not more:
                break
            await asyncio.sleep(0)
        turns += 1
        if trace is not None and turns % _TRACE_EVERY_FOLDS == 0:
            while True:
                more = trace.write_some(_TRACE_SLICE)
                if not more:
                    break
                await asyncio.sleep(0)
            trace.flush()


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
    trace_path: str | Path | None = None,
    chunks: str = "plain",
    batching: echo_batching.BatchingModel | None = None,
) -> None:
    """Serve until ``stop`` is set (or forever). ``ready(port)`` is called once listening (port 0 = a free port).

    ``trace_path``: write one JSON line per finished stream there (flushed every second and on the way out).
    """
    config = EchoConfig(ttft_ms, itl_ms, output_tokens, model, api_key, chunks)
    config.batching = batching
    stats = EchoStats()
    loop = asyncio.get_running_loop()
    selector = getattr(loop, "_selector", None)
    fd_limit = _SELECT_FD_LIMIT if isinstance(selector, selectors.SelectSelector) else None
    trace = TraceWriter(trace_path) if trace_path is not None else None
    shared = _Shared(config, stats, trace)
    listeners: list[socket.socket] = []
    housekeeping: asyncio.Task[None] | None = None
    try:
        listeners = _listen(host, port)
        for listener in listeners:
            loop.add_reader(listener.fileno(), _accept, listener, shared, fd_limit)
        housekeeping = asyncio.create_task(_housekeeping(stats, trace))
        if ready is not None:
            ready(listeners[0].getsockname()[1])
        if stop is None:
            await loop.create_future()
        else:
            await stop.wait()
    finally:
        if housekeeping is not None:
            housekeeping.cancel()
        for listener in listeners:
            loop.remove_reader(listener.fileno())
            listener.close()
        for conn in list(shared.conns):
            conn.abort()
        if trace is not None:
            trace.close()


if sys.platform == "linux":

    class _MicrosecondEpollSelector(selectors.EpollSelector):
        """epoll's readiness with select()'s microsecond timeout.

        ``epoll_wait`` takes whole milliseconds (every timer would wake up to 1 ms late), and a plain ``select()``
        loop scans every socket on every wake-up (~20 us at 256 connections, and no descriptor above 1023). Here
        ``select()`` waits on the epoll descriptor alone, which is readable once any registered socket is ready, and
        the events are then collected without blocking.
        """

        def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
            if timeout is None or timeout > 0:
                select.select([self.fileno()], [], [], timeout)
            return super().select(0)


def _precise_selector() -> selectors.BaseSelector:
    if sys.platform == "linux":
        return _MicrosecondEpollSelector()
    return selectors.SelectSelector()


def _tight_timer_slack() -> None:
    """Linux pads every timed wait of a thread by its timer slack (50 us by default): ask for 1 ns instead."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_TIMERSLACK, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # no prctl: the waits stay 50 us longer, nothing else changes


def _parser() -> argparse.ArgumentParser:
    from hpload.servers.settings import EchoSettings

    defaults = EchoSettings()  # the echo defaults have one home: the settings model
    p = argparse.ArgumentParser(prog="python -m hpload.servers.echo", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default=defaults.host)
    p.add_argument("--allow-remote", action="store_true", default=defaults.allow_remote,
                   help=EchoSettings.model_fields["allow_remote"].description)
    p.add_argument("--port", type=int, default=8100)
    p.add_argument("--ttft-ms", type=float, default=defaults.ttft_ms, help="delay from request to first token")
    p.add_argument("--itl-ms", type=float, default=defaults.itl_ms, help="delay between tokens")
    p.add_argument("--output-tokens", type=int, default=defaults.output_tokens,
                   help="tokens per reply when a request sets no max_tokens")
    p.add_argument("--model", default=defaults.served_model_name, help="the model name /v1/models lists")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY'")
    p.add_argument("--precise", action="store_true", help="microsecond timers (select() on epoll, no timer slack)")
    p.add_argument("--trace", default=None, metavar="FILE",
                   help="write one JSON line per finished stream: x-request-id, kernel arrival and every write (ns)")  # fmt: skip
    p.add_argument("--chunks", default="plain", choices=echo_chunks.PATTERNS,
                   help="a known chunk pattern for golden tests (hpload/servers/echo/chunks.py)")  # fmt: skip
    echo_batching.add_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.allow_remote:
        _parser().error("--host: the echo server binds loopback only; fix: use 127.0.0.1 (or add --allow-remote)")
    if args.output_tokens < 1 or args.ttft_ms < 0 or args.itl_ms < 0:
        _parser().error("--output-tokens must be >= 1 and --ttft-ms/--itl-ms >= 0")
    if args.trace is not None:
        try:
            open(args.trace, "w").close()  # fail here, in one line, not as a traceback from inside the loop
        except OSError as err:
            _parser().error(f"--trace {args.trace}: {err.strerror}; fix: name a file in a writable directory")

    try:
        batching = echo_batching.model_from_args(args)
    except ValueError as err:
        _parser().error(str(err))

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
            trace_path=args.trace, chunks=args.chunks, batching=batching,
        )  # fmt: skip

    # Everything start-up made (numpy, hdrh, the loadgen package serve_echo pulls in) leaves the collector's view:
    # collections while serving would scan it all again (measured: gen-1 pauses of 1.5 ms, a gen-2 one of 27 ms).
    importlib.import_module("hpload.loadgen.hist")
    gc.collect()
    gc.freeze()
    if args.precise:
        _tight_timer_slack()
        runner = asyncio.Runner(loop_factory=lambda: asyncio.SelectorEventLoop(_precise_selector()))
        with runner:
            runner.run(run())
    else:
        asyncio.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
