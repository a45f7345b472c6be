"""A lean HTTP/1.1 transport for httpx, built on an ``asyncio.Protocol``, for many concurrent SSE streams.

httpx stays the client API (requests, responses, exceptions); this replaces only the connection layer. Measured on
this project's 2-core machine against the echo server, httpcore's per-chunk path (h11 events, anyio streams, a pool
that revisits every connection per request) cost more CPU than the whole of vLLM's aiohttp client; here a chunk costs
one ``data_received`` and one future wake-up. Each body piece carries ``arrival_ns``, the ``perf_counter_ns`` taken
in ``data_received``, so latency is stamped when the bytes arrive, not when the consumer task gets to run.

Scope: plain HTTP/1.1 to loopback or LAN servers (no TLS, no proxies, no HTTP/2); chunked, content-length and
read-until-close bodies; keep-alive with an idle expiry shorter than the server's, so the server never closes a
connection the client is about to reuse.
"""

from __future__ import annotations

import asyncio
import select
from collections import deque
from collections.abc import AsyncIterator
from time import monotonic, perf_counter_ns

import httpx2 as httpx

_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILER, _UNTIL_CLOSE, _DONE = range(8)
_MAX_HEAD = 256 * 1024
ARRIVAL_EXTENSION = "hpload.arrival"  # response.extensions key: the body stream, whose arrival_ns stamps each piece


class _Connection(asyncio.Protocol):
    """One TCP connection, one response at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.state = _DONE
        self.remaining = 0
        self.head: tuple[int, list[tuple[bytes, bytes]]] | None = None
        self.pieces: deque[tuple[bytes, int]] = deque()
        self.waiter: asyncio.Future[None] | None = None
        self.error: Exception | None = None
        self.closed = False
        self.keep_alive = True
        self.idle_since = monotonic()
        self.received_any = False

    # ---- protocol callbacks ----
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        now = perf_counter_ns()
        self.received_any = True
        self.buf += data
        try:
            self._parse(now)
        except (ValueError, IndexError) as err:
            self.error = httpx.RemoteProtocolError(f"malformed response: {err}")
            if self.transport is not None:
                self.transport.close()
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        if self.state == _UNTIL_CLOSE:
            self.state = _DONE
        elif self.state != _DONE and self.error is None:
            msg = "Server disconnected without sending a response." if self.head is None else "peer closed mid-body"
            self.error = httpx.RemoteProtocolError(msg) if exc is None else httpx.ReadError(str(exc))
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # ---- parsing ----
    def _parse(self, now: int) -> None:
        buf = self.buf
        while buf:
            state = self.state
            if state == _CHUNK_SIZE:
                end = buf.find(b"\r\n")
                if end < 0:
                    return
                size = int(bytes(buf[:end]).split(b";", 1)[0], 16)
                del buf[: end + 2]
                if size:
                    self.remaining, self.state = size, _CHUNK_DATA
                else:
                    self.state = _TRAILER
            elif state == _CHUNK_DATA or state == _LENGTH:
                take = min(self.remaining, len(buf))
                self.pieces.append((bytes(buf[:take]), now))
                del buf[:take]
                self.remaining -= take
                if self.remaining == 0:
                    self.state = _CHUNK_CRLF if state == _CHUNK_DATA else _DONE
            elif state == _CHUNK_CRLF:
                if len(buf) < 2:
                    return
                del buf[:2]
                self.state = _CHUNK_SIZE
            elif state == _TRAILER:
                end = buf.find(b"\r\n")
                if end < 0:
                    return
                del buf[: end + 2]
                if end == 0:
                    self.state = _DONE
            elif state == _UNTIL_CLOSE:
                self.pieces.append((bytes(buf), now))
                buf.clear()
            elif state == _HEAD:
                if not self._parse_head():
                    return
            else:  # bytes after a complete response: the server broke framing
                raise ValueError("unexpected bytes after the response")

    def _parse_head(self) -> bool:
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > _MAX_HEAD:
                raise ValueError("response head too large")
            return False
        lines = bytes(self.buf[:end]).split(b"\r\n")
        del self.buf[: end + 4]
        version, _, rest = lines[0].partition(b" ")
        if not version.startswith(b"HTTP/1."):
            raise ValueError(f"bad status line {lines[0][:60]!r}")
        status = int(rest[:3])
        headers = []
        length: int | None = None
        chunked = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name, value = name.strip(), value.strip()
            headers.append((name, value))
            lname = name.lower()
            if lname == b"content-length":
                length = int(value)
            elif lname == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif lname == b"connection" and value.lower() == b"close":
                self.keep_alive = False
        if status < 200:  # 1xx interim response: the real one follows
            return True
        self.head = (status, headers)
        if chunked:
            self.state = _CHUNK_SIZE
        elif length is not None:
            self.remaining = length
            self.state = _LENGTH if length else _DONE
        elif status in (204, 304):
            self.state = _DONE
        else:
            self.state = _UNTIL_CLOSE
            self.keep_alive = False
        return True

    # ---- consumer side ----
    def start(self, data: bytes) -> None:
        assert self.transport is not None
        self.state, self.head, self.error = _HEAD, None, None
        self.received_any = False
        self.pieces.clear()
        self.transport.write(data)

    async def wait(self) -> None:
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None

    async def read_head(self) -> tuple[int, list[tuple[bytes, bytes]]]:
        while self.head is None:
            if self.error is not None:
                raise self.error
            if self.closed:
                raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
            await self.wait()
        return self.head

    @property
    def reusable(self) -> bool:
        return self.keep_alive and not self.closed and self.state == _DONE and not self.buf


class _Body(httpx.AsyncByteStream):
    """The response body. ``arrival_ns`` is the arrival time of the piece most recently yielded."""

    def __init__(self, conn: _Connection, pool: LeanTransport, key: tuple[str, int]) -> None:
        self.conn, self.pool, self.key = conn, pool, key
        self.arrival_ns = 0
        self._released = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        conn = self.conn
        pieces = conn.pieces
        while True:
            while pieces:
                data, self.arrival_ns = pieces.popleft()
                yield data
            if conn.error is not None:
                raise conn.error
            if conn.state == _DONE:
                break
            if conn.closed:
                raise httpx.RemoteProtocolError("peer closed mid-body")
            await conn.wait()
        self._release()

    def _release(self) -> None:
        if not self._released:
            self._released = True
            self.pool.release(self.key, self.conn)

    async def aclose(self) -> None:
        if not self._released:
            self._released = True
            # A body not read to its end leaves the connection mid-response: it cannot carry another request.
            if self.conn.state != _DONE or self.conn.pieces:
                self.conn.keep_alive = False
            self.pool.release(self.key, self.conn)


def _readable(conn: _Connection) -> bool:
    """An idle connection with bytes (or EOF) waiting is one the server has closed or broken: never reuse it."""
    sock = conn.transport.get_extra_info("socket") if conn.transport is not None else None
    if sock is None:
        return True
    try:
        poller = select.poll()  # not select.select: descriptors above 1023 are common at high concurrency
        poller.register(sock.fileno(), select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True


class LeanTransport(httpx.AsyncBaseTransport):
    """httpx transport with an O(1) keep-alive pool per host (LIFO, so warm connections are reused first)."""

    def __init__(self, *, keepalive_expiry_s: float = 3.0, connect_timeout_s: float = 10.0) -> None:
        self.keepalive_expiry_s = keepalive_expiry_s
        self.connect_timeout_s = connect_timeout_s
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._all: set[_Connection] = set()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme != "http":
            raise httpx.UnsupportedProtocol(f"{url.scheme}: this transport speaks plain HTTP/1.1 only")
        key = (url.host, url.port or 80)
        body = request.content if isinstance(request.stream, httpx.ByteStream) else await request.aread()
        head = [b"%s %s HTTP/1.1\r\n" % (request.method.encode(), url.raw_path)]
        head += [b"%s: %s\r\n" % (k, v) for k, v in request.headers.raw]
        data = b"".join(head) + b"\r\n" + body
        for attempt in (0, 1):
            conn, reused = await self._acquire(key, request)
            try:
                conn.start(data)
                status, headers = await conn.read_head()
                break
            except httpx.RemoteProtocolError:
                self._discard(conn)
                # A kept-alive connection the server closed just as it was reused: the request never reached the
                # application (no response byte came back), so one retry on a fresh connection is safe.
                if attempt or not reused or conn.received_any:
                    raise
            except BaseException:
                self._discard(conn)
                raise
        body_stream = _Body(conn, self, key)
        # httpx wraps the stream it is given; the extension is how the reader finds the arrival stamps.
        return httpx.Response(
            status, headers=headers, stream=body_stream, request=request, extensions={ARRIVAL_EXTENSION: body_stream}
        )

    async def _acquire(self, key: tuple[str, int], request: httpx.Request) -> tuple[_Connection, bool]:
        idle = self._idle.get(key)
        now = monotonic()
        while idle:
            conn = idle.pop()
            if conn.reusable and now - conn.idle_since < self.keepalive_expiry_s and not _readable(conn):
                return conn, True
            self._discard(conn)
        timeout = request.extensions.get("timeout", {}).get("connect") or self.connect_timeout_s
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(_Connection, key[0], key[1])
        except TimeoutError as err:
            raise httpx.ConnectTimeout(f"connect to {key[0]}:{key[1]} took over {timeout} s") from err
        except OSError as err:
            raise httpx.ConnectError(f"{err.strerror or err}: {key[0]}:{key[1]}") from err
        self._all.add(conn)
        return conn, False

    def release(self, key: tuple[str, int], conn: _Connection) -> None:
        if conn.reusable:
            conn.idle_since = monotonic()
            self._idle.setdefault(key, []).append(conn)
        else:
            self._discard(conn)

    def _discard(self, conn: _Connection) -> None:
        self._all.discard(conn)
        if conn.transport is not None:
            conn.transport.close()

    async def aclose(self) -> None:
        for conn in list(self._all):
            self._discard(conn)
        self._idle.clear()
