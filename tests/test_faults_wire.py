"""Fault matrix, wire level: small raw asyncio servers that misbehave on purpose, driven by the real load generator.

Each failure must land under the right error kind, the counts must add up (completed + failed = sent), and the
client must return a result rather than raise, whatever the server does. Timeouts and the run's duration bound are
checked against servers that accept and then say nothing.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from helpers import wait_s

from hpload.loadgen import LoadSpec, Target, WorkloadSpec, run_load
from hpload.loadgen.result import RunResult

# The raw servers live on the test's loop, so the fixture that closes them must share it.
pytestmark = pytest.mark.asyncio(loop_scope="session")

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
WORKLOAD = WorkloadSpec(input_len=2, max_tokens=4)
TOKEN = json.dumps({"choices": [{"index": 0, "text": "a"}]})
USAGE = json.dumps({"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 2}})


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """Reads one request; returns its request line (``POST /v1/completions HTTP/1.1``)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length"):
            length = int(line.split(b":")[1])
    await reader.readexactly(length)
    return head.split(b"\r\n", 1)[0]


def sse_response(*blocks: bytes) -> bytes:
    payload = b"".join(blocks)
    return b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\ncontent-length: %d\r\n\r\n%s" % (
        len(payload),
        payload,
    )


def data(event: str) -> bytes:
    return f"data: {event}\n\n".encode()


# Servers that close after a reply say so (connection: close); one that closes silently races the client's reuse of
# the kept-alive connection, which is counted as a disconnect and would blur the per-kind counts here.
GOOD_STREAM = sse_response(data(TOKEN), data(TOKEN), data(USAGE), data("[DONE]"))


async def reply(writer: asyncio.StreamWriter, raw: bytes, *, close: bool = True) -> None:
    writer.write(raw)
    await writer.drain()
    if close:
        writer.close()


async def good(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    await reply(writer, GOOD_STREAM)


async def malformed_sse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    # A token, then a data line cut mid-object, then a proper end: the broken event must fail the request.
    await reply(writer, sse_response(data(TOKEN), data('{"choices": [{"index": 0, "te'), data("[DONE]")))


async def sse_error_event(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    await reply(writer, sse_response(data(TOKEN), b"event: error\ndata: engine overloaded\n\n", data("[DONE]")))


async def error_object_in_200(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    err = json.dumps({"error": {"message": "CUDA out of memory", "type": "server_error", "code": 500}})
    await reply(writer, sse_response(data(TOKEN), data(err), data("[DONE]")))


async def truncated_json(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    body = b'{"id": "x", "choices": [{"index": 0, "text": "abc"'  # well framed, but the JSON stops early
    await reply(writer, b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: %d\r\n\r\n%s"
                % (len(body), body))  # fmt: skip


async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
    await writer.drain()
    sock = writer.get_extra_info("socket")
    # SO_LINGER with a zero timeout turns close() into a TCP RST: the client sees "connection reset by peer".
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def hang_forever(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    if (await read_request(reader)).startswith(b"GET"):
        # The client's /metrics scrapes get a quick 404, so only the completions hang.
        await reply(writer, b"HTTP/1.1 404 Not Found\r\nconnection: close\r\ncontent-length: 0\r\n\r\n")
        return
    await asyncio.sleep(3600)


async def stall_mid_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    if (await read_request(reader)).startswith(b"GET"):
        await reply(writer, b"HTTP/1.1 404 Not Found\r\nconnection: close\r\ncontent-length: 0\r\n\r\n")
        return
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
    event = data(TOKEN)
    writer.write(b"%x\r\n%s\r\n" % (len(event), event))
    await writer.drain()
    await asyncio.sleep(3600)


class Raw:
    """Starts raw servers on free loopback ports and closes them (and their open connections) afterwards."""

    def __init__(self) -> None:
        self.servers: list[asyncio.Server] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.handlers: set[asyncio.Task[None]] = set()

    async def start(self, handler: Handler) -> str:
        async def wrapped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.writers.append(writer)
            task = asyncio.current_task()
            assert task is not None
            self.handlers.add(task)
            try:
                await handler(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
                pass

        server = await asyncio.start_server(wrapped, "127.0.0.1", 0)
        self.servers.append(server)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    async def close(self) -> None:
        for task in self.handlers:
            task.cancel()
        for writer in self.writers:
            writer.transport.abort()
        for server in self.servers:
            server.close()
            await server.wait_closed()


@pytest.fixture
async def raw() -> AsyncIterator[Raw]:
    r = Raw()
    yield r
    await r.close()


def assert_accounted(result: RunResult, sent: int) -> None:
    s = result.summary
    assert s["completed"] + s["failed"] == sent, (s["completed"], s["failed"], result.errors)
    assert sum(result.errors.values()) == s["failed"]


@pytest.mark.parametrize(
    ("handler", "stream", "kind"),
    [
        (malformed_sse, True, "protocol"),
        (sse_error_event, True, "stream"),
        (error_object_in_200, True, "stream"),
        (truncated_json, False, "protocol"),
        (reset, True, "disconnect"),
    ],
    ids=["malformed-sse", "error-event-in-200", "error-object-in-200", "truncated-json", "reset"],
)
async def test_bad_responses_are_counted_under_their_kind(raw: Raw, handler: Handler, stream: bool, kind: str) -> None:
    url = await raw.start(handler)
    workload = WorkloadSpec(input_len=2, max_tokens=4, stream=stream)
    result = await run_load(Target(url, "m"), workload, LoadSpec(concurrency=3, num_requests=6))
    assert result.errors == {kind: 6}, result.error_samples
    assert_accounted(result, 6)
    assert result.error_samples[kind], "each kind keeps a sample message for the report"


async def test_a_5xx_burst_counts_only_the_burst(raw: Raw) -> None:
    served = itertools.count()

    async def burst(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await read_request(reader)
        # Only completions count: the client also scrapes /metrics before and after the run.
        if line.startswith(b"POST") and next(served) < 7:
            body = b'{"error": {"message": "overloaded"}}'
            head = b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-length: %d\r\n\r\n" % len(body)
            await reply(writer, head + body)
        else:
            await reply(writer, GOOD_STREAM)

    url = await raw.start(burst)
    result = await run_load(Target(url, "m"), WORKLOAD, LoadSpec(concurrency=1, num_requests=20))
    assert result.errors == {"http_5xx": 7}, result.error_samples
    assert result.summary["completed"] == 13
    assert "503" in result.error_samples["http_5xx"]


async def test_connection_refused_is_a_connect_error() -> None:
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there now
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = await run_load(Target(f"http://127.0.0.1:{port}", "m"), WORKLOAD, LoadSpec(concurrency=2, num_requests=4))
    assert result.errors == {"connect": 4}
    assert_accounted(result, 4)


def _accept_queue_full(port: int) -> bool:
    """Whether the IPv4 listener on ``port`` has a full accept queue. In /proc/net/tcp a listener's rx_queue is its
    accept queue and tx_queue the queue's limit; the kernel drops SYNs once the first exceeds the second."""
    with open("/proc/net/tcp") as fh:
        for line in fh.readlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                limit, queued = (int(x, 16) for x in fields[4].split(":"))
                return queued > limit
    return False


async def test_connect_timeout_against_a_full_accept_queue() -> None:
    # A listener that never accepts, with its backlog filled: Linux drops further SYNs, so connect() hangs until
    # the client's connect timeout ends it.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):
            s = socket.socket()
            s.setblocking(False)
            try:
                s.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            fillers.append(s)
        # The fillers' handshakes complete in the kernel: wait until the accept queue is really full.
        deadline = time.monotonic() + wait_s(10)
        while not _accept_queue_full(port):
            assert time.monotonic() < deadline, "the fillers never filled the accept queue"
            await asyncio.sleep(0.01)
        t0 = time.monotonic()
        load = LoadSpec(concurrency=2, num_requests=2, connect_timeout_s=0.5)
        result = await run_load(Target(f"http://127.0.0.1:{port}", "m"), WORKLOAD, load)
        elapsed = time.monotonic() - t0
    finally:
        for s in fillers:
            s.close()
        listener.close()
    assert result.errors == {"timeout": 2}, result.error_samples
    # The /metrics scrape before the run has its own bounded 5 s wait (and none after, once it failed).
    assert elapsed < 9, f"connect timeout 0.5 s, but the run took {elapsed:.1f} s"


@pytest.mark.parametrize(
    ("handler", "what"),
    [(hang_forever, "first token"), (stall_mid_stream, "next chunk")],
    ids=["hung-before-first-token", "stalled-mid-stream"],
)
async def test_hung_and_stalled_streams_end_by_timeout(raw: Raw, handler: Handler, what: str) -> None:
    url = await raw.start(handler)
    load = LoadSpec(concurrency=4, num_requests=8, first_token_timeout_s=0.6, idle_timeout_s=0.4)
    t0 = time.monotonic()
    result = await run_load(Target(url, "m"), WORKLOAD, load)
    elapsed = time.monotonic() - t0
    assert result.errors == {"timeout": 8}, result.error_samples
    assert what in result.error_samples["timeout"]
    # Two waves of four, each ended by a sub-second timeout; generous slack for a loaded 2-core box.
    assert elapsed < 8, elapsed


async def test_the_runs_duration_bound_holds_against_a_hung_server(raw: Raw) -> None:
    url = await raw.start(hang_forever)
    # Per-request timeouts far beyond the run: only the duration bound (plus the drain grace) can end it.
    load = LoadSpec(concurrency=4, duration_s=1.5, drain_timeout_s=0.5, first_token_timeout_s=300, idle_timeout_s=300)
    t0 = time.monotonic()
    result = await asyncio.wait_for(run_load(Target(url, "m"), WORKLOAD, load), timeout=60)
    elapsed = time.monotonic() - t0
    assert elapsed < 2 + 4, f"duration_s 1.5 + drain 0.5 but the run took {elapsed:.1f} s"
    assert result.summary["completed"] == 0
    assert result.counters.get("incomplete", 0) == 4, result.counters


async def test_the_client_survives_every_fault_at_once(raw: Raw) -> None:
    faults: list[Handler] = [good, malformed_sse, sse_error_event, truncated_json, reset, stall_mid_stream, good]
    turn = itertools.count()

    async def mixed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Every fault on its own connection, in turn; keep-alive connections get a new fault per request.
        while True:
            handler = faults[next(turn) % len(faults)]
            if handler is truncated_json:
                handler = error_object_in_200  # streamed requests here; truncated bodies are covered above
            await handler(reader, writer)
            if writer.is_closing():
                return

    url = await raw.start(mixed)
    load = LoadSpec(concurrency=8, num_requests=70, first_token_timeout_s=2, idle_timeout_s=0.5)
    result = await asyncio.wait_for(run_load(Target(url, "m"), WORKLOAD, load), timeout=90)
    assert_accounted(result, 70)
    assert result.summary["completed"] >= 10
    assert {"protocol", "stream", "disconnect", "timeout"} <= set(result.errors), result.errors
