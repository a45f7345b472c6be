"""LeanTransport: body framings, keep-alive reuse and expiry, stale-connection retry, arrival stamps."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from time import perf_counter_ns

import httpx2
import pytest

from hpload import netstamp
from hpload.loadgen.transport import ARRIVAL_EXTENSION, LeanTransport

# Fixtures and tests share the session loop: the client's connections must be closed on the loop that made them.
pytestmark = pytest.mark.asyncio(loop_scope="session")

Reply = Callable[[int], bytes]  # request number on the connection -> raw response bytes


class RawServer:
    """Answers each request with bytes chosen by the test; counts connections and can close after replying."""

    def __init__(self, reply: Reply, close_after: bool = False) -> None:
        self.reply = reply
        self.close_after = close_after
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        _open_servers.append(self.server)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        n = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")), 0
                )
                await reader.readexactly(length)
                writer.write(self.reply(n))
                await writer.drain()
                n += 1
                if self.close_after:
                    writer.close()
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return


_open_servers: list[asyncio.Server] = []


@pytest.fixture(autouse=True)
async def _close_servers() -> AsyncIterator[None]:
    yield
    while _open_servers:
        _open_servers.pop().close()


@pytest.fixture
async def client() -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(transport=LeanTransport(keepalive_expiry_s=0.3)) as c:
        yield c


def chunked(*parts: bytes) -> bytes:
    body = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\nx-trailer: 1\r\n\r\n"
    return b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + body


@pytest.mark.parametrize(
    ("raw", "body"),
    [
        (chunked(b"hello ", b"world"), b"hello world"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nabcde", b"abcde"),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok", b"ok"),
        (b"HTTP/1.1 204 No Content\r\n\r\n", b""),
    ],
    ids=["chunked", "length", "interim-100", "no-content"],
)
async def test_body_framings(client: httpx2.AsyncClient, raw: bytes, body: bytes) -> None:
    server = RawServer(lambda n: raw)
    url = await server.start()
    for _ in range(2):
        resp = await client.post(url + "/x", content=b"{}")
        assert resp.content == body
    assert server.connections == 1  # kept alive and reused


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 100 Continue\r\n\r\n" + chunked(b"data: one\n\n", b"data: two\n\n"),
        b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\nhello world",
    ],
)
async def test_a_reply_split_anywhere_parses_the_same(client: httpx2.AsyncClient, raw: bytes) -> None:
    """Request n gets its reply in two reads split at byte n, so every split point of head, chunk-size line, chunk
    data, CRLF and trailer is crossed by some read (the second write waits until the first was surely read)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for split in range(1, len(raw)):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(raw[:split])
            await writer.drain()
            await asyncio.sleep(0.002)
            writer.write(raw[split:])
            await writer.drain()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    _open_servers.append(server)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    want = b"data: one\n\ndata: two\n\n" if b"chunked" in raw else b"hello world"
    for split in range(1, len(raw)):
        assert (await client.get(url)).content == want, f"split at byte {split}"


async def test_read_until_close_body(client: httpx2.AsyncClient) -> None:
    server = RawServer(lambda n: b"HTTP/1.1 200 OK\r\n\r\nstream until close", close_after=True)
    url = await server.start()
    assert (await client.get(url)).content == b"stream until close"
    assert (await client.get(url)).content == b"stream until close"
    assert server.connections == 2  # no framing: the connection could not be reused


async def test_idle_connections_expire(client: httpx2.AsyncClient) -> None:
    server = RawServer(lambda n: b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
    url = await server.start()
    await client.get(url)
    await client.get(url)
    await asyncio.sleep(0.4)  # past keepalive_expiry_s
    await client.get(url)
    assert server.connections == 2


async def test_server_closing_a_kept_alive_connection_is_retried_once(client: httpx2.AsyncClient) -> None:
    # No "connection: close" header, yet the server closes after each reply (as a server at its idle limit would).
    server = RawServer(lambda n: b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", close_after=True)
    url = await server.start()
    for _ in range(5):
        assert (await client.get(url)).content == b"ok"
    assert server.connections == 5


async def test_malformed_and_truncated_responses_raise_httpx_errors(client: httpx2.AsyncClient) -> None:
    bad = RawServer(lambda n: b"SPDY/9 what\r\n\r\n", close_after=True)
    with pytest.raises(httpx2.RemoteProtocolError):
        await client.get(await bad.start())
    short = RawServer(lambda n: b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc", close_after=True)
    with pytest.raises(httpx2.RemoteProtocolError):
        await client.get(await short.start())


async def test_connect_errors_are_httpx_errors() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with httpx2.AsyncClient(transport=LeanTransport()) as c:
        with pytest.raises(httpx2.ConnectError):
            await c.get(f"http://127.0.0.1:{port}/")


async def test_pieces_carry_their_arrival_time(client: httpx2.AsyncClient) -> None:
    gate = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await writer.drain()
        await gate.wait()
        writer.write(b"6\r\nsecond\r\n0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    stamps = []
    async with client.stream("GET", url) as resp:
        body = resp.extensions[ARRIVAL_EXTENSION]
        async for piece in resp.aiter_raw():
            stamps.append((piece, body.arrival_ns))
            if piece == b"first":
                await asyncio.sleep(0.05)
                t_release = perf_counter_ns()
                gate.set()
    server.close()
    assert [p for p, _ in stamps] == [b"first", b"second"]
    assert stamps[0][1] < t_release <= stamps[1][1]


async def test_unread_body_closes_the_connection(client: httpx2.AsyncClient) -> None:
    server = RawServer(lambda n: chunked(b"a" * 10, b"b" * 10))
    url = await server.start()
    async with client.stream("GET", url) as resp:
        async for _ in resp.aiter_raw():
            break  # abandon mid-body
    assert (await client.get(url)).content == b"a" * 10 + b"b" * 10
    assert server.connections == 2


def _kernel_stamps() -> bool:
    with socket.socket() as sock:
        return netstamp.enable(sock)


def _threaded_server(script: Callable[[socket.socket], None]) -> tuple[str, threading.Thread]:
    """A server in its own thread, so it keeps time while the test blocks the client's event loop."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        with conn, listener:
            script(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return f"http://127.0.0.1:{port}", thread


@pytest.mark.skipif(not _kernel_stamps(), reason="no kernel receive timestamps on this system")
async def test_arrival_is_when_bytes_came_not_when_a_busy_loop_read_them(client: httpx2.AsyncClient) -> None:
    sent: dict[str, int] = {}

    def script(conn: socket.socket) -> None:
        while b"\r\n\r\n" not in conn.recv(65536):
            pass
        sent["request_seen"] = perf_counter_ns()
        sent["first"] = perf_counter_ns()
        conn.sendall(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        time.sleep(0.02)
        sent["second"] = perf_counter_ns()
        conn.sendall(b"6\r\nsecond\r\n0\r\n\r\n")

    url, thread = _threaded_server(script)
    async with client.stream("GET", url) as resp:
        body = resp.extensions[ARRIVAL_EXTENSION]
        # The loop is stuck (as when it serves hundreds of streams) while the second piece comes in.
        time.sleep(0.15)  # noqa: ASYNC251 - blocking the loop is the point
        read_ns = perf_counter_ns()
        stamps = [(piece, body.arrival_ns) async for piece in resp.aiter_raw()]
    thread.join(5)
    assert [p for p, _ in stamps] == [b"first", b"second"]
    assert body.start_ns <= sent["request_seen"]
    for (_, at), key in zip(stamps, ("first", "second"), strict=True):
        assert 0 <= at - sent[key] < 5_000_000, f"{key}: stamped {(at - sent[key]) / 1e6:.2f} ms after it was sent"
    assert read_ns - sent["second"] > 100_000_000  # the loop really was late to read it
