"""A lean HTTP/1.1 transport for httpx, for many concurrent SSE streams, timed by the kernel.

httpx stays the client API (requests, responses, exceptions); this replaces only the connection layer. Measured on
this project's 2-core machine against the echo server, httpcore's per-chunk path (h11 events, anyio streams, a pool
that revisits every connection per request) cost more CPU than the whole of vLLM's aiohttp client; here a chunk costs
one read callback and one future wake-up.

Each connection is a non-blocking socket read with ``recvmsg``, so every body piece carries ``arrival_ns``: when its
bytes reached this host by the kernel's receive timestamp (:mod:`hpload.netstamp`), in ``perf_counter_ns`` units. A
stamp taken when the event loop gets to the socket would carry the loop's backlog: with 256 streams receiving a token
at once, the last one is read milliseconds late. The request's start (``start_ns``) is stamped just before its bytes
are handed to the kernel, or before the connection is opened when it needs a new one, so connection set-up counts as
vLLM's bench client counts it.

A kernel stamp is that of the newest bytes in a read, so a socket must still be read before its next chunk comes,
or two tokens share one stamp. One loop iteration can run hundreds of consumer steps (a whole burst of tokens, tens
of milliseconds), so reads do not wait for the next iteration: all connections sit in one epoll set
(:class:`_Readers`), which the loop watches as one descriptor, and consumers drain it between their steps whenever
``DRAIN_EVERY_NS`` has passed. Reading stays at most about a millisecond behind, however busy the loop is.

Scope: plain HTTP/1.1 to loopback or LAN servers (no TLS, no proxies, no HTTP/2); chunked, content-length and
read-until-close bodies; keep-alive with an idle expiry shorter than the server's, so the server never closes a
connection the client is about to reuse.
"""

# Over ~500 lines on purpose: the connection, its pool and the shared epoll reader set are one timing mechanism
# (a stamp is only right if all three cooperate), and reading them apart would hide how a chunk's time is taken.
from __future__ import annotations

import asyncio
import errno
import select
import socket
from collections import deque
from collections.abc import AsyncIterator
from time import monotonic, perf_counter_ns
from typing import Any

import httpx2

from hpload import netstamp

_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILER, _UNTIL_CLOSE, _DONE = range(8)
_MAX_HEAD = 256 * 1024
_READ_SIZE = 64 * 1024
DRAIN_EVERY_NS = 1_000_000
ARRIVAL_EXTENSION = "hpload.arrival"  # response.extensions key: the body stream, with start_ns and arrival_ns


class _Connection:
    """One TCP connection, one response at a time."""

    def __init__(self, sock: socket.socket, readers: _Readers) -> None:
        self.readers = readers
        self.sock: socket.socket | None = sock
        self.fd = sock.fileno()
        self.stamped = netstamp.enable(sock)
        self.out = bytearray()  # request bytes the kernel has not taken yet
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
        self.sent_ns = 0
        readers.add(self)

    # ---- socket callbacks ----
    def _on_readable(self, offset_ns: int | None = None) -> None:
        sock = self.sock
        if sock is None:
            return
        try:
            data, at = netstamp.recv(sock, _READ_SIZE, self.stamped, offset_ns)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as err:
            self._lost(err)
            return
        if not data:
            self._lost(None)
            return
        self.received_any = True
        if self.buf:
            self.buf += data
            data = bytes(self.buf)
            self.buf.clear()
        try:
            used = self._parse(data, at)
            if used < len(data):
                self.buf += data[used:]
        except (ValueError, IndexError) as err:
            self.error = httpx2.RemoteProtocolError(f"malformed response: {err}")
            self.close()
        self._wake()

    def _on_writable(self) -> None:
        sock = self.sock
        if sock is None:
            return
        try:
            sent = sock.send(self.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as err:
            self._write_failed(err)
            return
        del self.out[:sent]
        if not self.out:
            self.readers.loop.remove_writer(self.fd)

    def _write(self, data: bytes) -> None:
        sock = self.sock
        if sock is None:
            self._write_failed(None)
            return
        if self.out:
            self.out += data
            return
        try:
            sent = sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as err:
            self._write_failed(err)
            return
        if sent < len(data):
            self.out += data[sent:]
            self.readers.loop.add_writer(self.fd, self._on_writable)

    def _write_failed(self, err: OSError | None) -> None:
        # A reset or a closed socket while sending: the server is gone; the reader side learns it the same way.
        if err is not None and err.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.EBADF):
            self.error = self.error or httpx2.WriteError(str(err))
        self._lost(err)

    def _lost(self, exc: Exception | None) -> None:
        self.close()
        if self.state == _UNTIL_CLOSE:
            self.state = _DONE
        elif self.state != _DONE and self.error is None:
            msg = "Server disconnected without sending a response." if self.head is None else "peer closed mid-body"
            self.error = httpx2.RemoteProtocolError(msg) if exc is None else httpx2.ReadError(str(exc))
        self._wake()

    def close(self) -> None:
        sock, self.sock = self.sock, None
        self.closed = True
        if sock is None:
            return
        self.readers.remove(self)
        if self.out:
            self.readers.loop.remove_writer(self.fd)
            self.out.clear()
        sock.close()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # ---- parsing ----
    def _parse(self, data: bytes, now: int) -> int:
        """Consume what it can of ``data`` (the bytes left from the last read first); returns how many bytes it used,
        the rest waits for more. Walks an index instead of cutting a buffer: a read is usually one whole chunk."""
        pos, n = 0, len(data)
        pieces = self.pieces
        while pos < n:
            state = self.state
            if state == _CHUNK_SIZE:
                end = data.find(b"\r\n", pos)
                if end < 0:
                    break
                semi = data.find(b";", pos, end)
                size = int(data[pos : end if semi < 0 else semi], 16)
                start = end + 2
                if not size:
                    self.state = _TRAILER
                    pos = start
                elif n - start >= size + 2:  # the whole chunk and its CRLF are here: no state to keep
                    pieces.append((data[start : start + size], now))
                    pos = start + size + 2
                else:
                    self.remaining, self.state = size, _CHUNK_DATA
                    pos = start
            elif state == _CHUNK_DATA or state == _LENGTH:
                take = min(self.remaining, n - pos)
                pieces.append((data[pos : pos + take], now))
                pos += take
                self.remaining -= take
                if not self.remaining:
                    self.state = _CHUNK_CRLF if state == _CHUNK_DATA else _DONE
            elif state == _CHUNK_CRLF:
                if n - pos < 2:
                    break
                pos += 2
                self.state = _CHUNK_SIZE
            elif state == _TRAILER:
                end = data.find(b"\r\n", pos)
                if end < 0:
                    break
                if end == pos:
                    self.state = _DONE
                pos = end + 2
            elif state == _UNTIL_CLOSE:
                pieces.append((data[pos:], now))
                pos = n
            elif state == _HEAD:
                used = self._parse_head(data, pos)
                if used < 0:
                    break
                pos = used
            else:  # bytes after a complete response: the server broke framing
                raise ValueError("unexpected bytes after the response")
        return pos

    def _parse_head(self, data: bytes, pos: int) -> int:
        """Where the head starting at ``pos`` ends, or -1 while it is incomplete."""
        end = data.find(b"\r\n\r\n", pos)
        if end < 0:
            if len(data) - pos > _MAX_HEAD:
                raise ValueError("response head too large")
            return -1
        lines = data[pos:end].split(b"\r\n")
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
            return end + 4
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
        return end + 4

    # ---- consumer side ----
    def start(self, data: bytes) -> None:
        self.state, self.head, self.error = _HEAD, None, None
        self.received_any = False
        self.pieces.clear()
        self.sent_ns = perf_counter_ns()
        self._write(data)

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
                raise httpx2.RemoteProtocolError("Server disconnected without sending a response.")
            await self.wait()
        return self.head

    @property
    def reusable(self) -> bool:
        return self.keep_alive and not self.closed and self.state == _DONE and not self.buf


class _Body(httpx2.AsyncByteStream):
    """The response body. ``arrival_ns`` is the arrival time of the piece most recently yielded; ``start_ns`` when
    the request started (its bytes handed to the kernel, or its new connection begun)."""

    def __init__(self, conn: _Connection, pool: LeanTransport, key: tuple[str, int], start_ns: int) -> None:
        self.conn, self.pool, self.key = conn, pool, key
        self.start_ns = start_ns
        self.arrival_ns = 0
        self._released = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        conn = self.conn
        pieces = conn.pieces
        while True:
            while pieces:
                data, self.arrival_ns = pieces.popleft()
                yield data
                conn.readers.maybe_drain()
            if conn.error is not None:
                raise conn.error
            if conn.state == _DONE:
                break
            if conn.closed:
                raise httpx2.RemoteProtocolError("peer closed mid-body")
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


class _Readers:
    """Reads every connection of one transport: from one epoll set where there is one (Linux), which the loop watches
    as a single descriptor and consumers drain between steps; else one loop reader per socket."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.conns: dict[int, _Connection] = {}
        self.last_ns = 0
        self.epoll = select.epoll() if hasattr(select, "epoll") else None
        if self.epoll is not None:
            loop.add_reader(self.epoll.fileno(), self.drain)

    def add(self, conn: _Connection) -> None:
        self.conns[conn.fd] = conn
        if self.epoll is not None:
            self.epoll.register(conn.fd, select.EPOLLIN)
        else:
            self.loop.add_reader(conn.fd, conn._on_readable)

    def remove(self, conn: _Connection) -> None:
        if self.conns.get(conn.fd) is not conn:
            return
        del self.conns[conn.fd]
        if self.epoll is not None:
            try:
                self.epoll.unregister(conn.fd)
            except (OSError, ValueError):
                pass
        else:
            self.loop.remove_reader(conn.fd)

    def drain(self) -> None:
        """Read every connection with bytes (or EOF) waiting."""
        if self.epoll is None:
            return
        self.last_ns = now = perf_counter_ns()
        ready = self.epoll.poll(0)
        if not ready:
            return
        offset_ns = netstamp.realtime_offset(now)  # once per batch of reads: it moves only when the clock is stepped
        for fd, _events in ready:
            conn = self.conns.get(fd)
            if conn is not None:
                conn._on_readable(offset_ns)

    def maybe_drain(self) -> None:
        if perf_counter_ns() - self.last_ns > DRAIN_EVERY_NS:
            self.drain()

    def close(self) -> None:
        if self.epoll is not None and not self.epoll.closed:
            self.loop.remove_reader(self.epoll.fileno())
            self.epoll.close()


def _readable(conn: _Connection) -> bool:
    """An idle connection with bytes (or EOF) waiting is one the server has closed or broken: never reuse it."""
    sock = conn.sock
    if sock is None:
        return True
    try:
        poller = select.poll()  # not select.select: descriptors above 1023 are common at high concurrency
        poller.register(sock.fileno(), select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True


class LeanTransport(httpx2.AsyncBaseTransport):
    """httpx transport with an O(1) keep-alive pool per host (LIFO, so warm connections are reused first)."""

    def __init__(self, *, keepalive_expiry_s: float = 3.0, connect_timeout_s: float = 10.0) -> None:
        self.keepalive_expiry_s = keepalive_expiry_s
        self.connect_timeout_s = connect_timeout_s
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._all: set[_Connection] = set()
        self._readers: _Readers | None = None
        self._addresses: dict[tuple[str, int], asyncio.Future[list[tuple[int, tuple[Any, ...]]]]] = {}

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        url = request.url
        if url.scheme != "http":
            raise httpx2.UnsupportedProtocol(f"{url.scheme}: this transport speaks plain HTTP/1.1 only")
        key = (url.host, url.port or 80)
        if self._readers is not None:
            self._readers.maybe_drain()  # a burst of requests ending and starting is a long run of steps too
        body = request.content if isinstance(request.stream, httpx2.ByteStream) else await request.aread()
        head = [b"%s %s HTTP/1.1\r\n" % (request.method.encode(), url.raw_path)]
        head += [b"%s: %s\r\n" % (k, v) for k, v in request.headers.raw]
        data = b"".join(head) + b"\r\n" + body
        start_ns = 0
        for attempt in (0, 1):
            began_ns = perf_counter_ns()
            conn, reused = await self._acquire(key, request)
            try:
                conn.start(data)
                # The first attempt's start: a retry after a stale connection is part of this request's latency.
                start_ns = start_ns or (conn.sent_ns if reused else began_ns)
                status, headers = await conn.read_head()
                break
            except httpx2.RemoteProtocolError:
                self._discard(conn)
                # A kept-alive connection the server closed just as it was reused: the request never reached the
                # application (no response byte came back), so one retry on a fresh connection is safe.
                if attempt or not reused or conn.received_any:
                    raise
            except BaseException:
                self._discard(conn)
                raise
        body_stream = _Body(conn, self, key, start_ns)
        # httpx wraps the stream it is given; the extension is how the reader finds the arrival stamps.
        return httpx2.Response(
            status, headers=headers, stream=body_stream, request=request, extensions={ARRIVAL_EXTENSION: body_stream}
        )

    async def _acquire(self, key: tuple[str, int], request: httpx2.Request) -> tuple[_Connection, bool]:
        idle = self._idle.get(key)
        now = monotonic()
        while idle:
            conn = idle.pop()
            if conn.reusable and now - conn.idle_since < self.keepalive_expiry_s and not _readable(conn):
                return conn, True
            self._discard(conn)
        timeout = request.extensions.get("timeout", {}).get("connect") or self.connect_timeout_s
        try:
            async with asyncio.timeout(timeout):
                conn = await self._connect(key)
        except TimeoutError as err:
            raise httpx2.ConnectTimeout(f"connect to {key[0]}:{key[1]} took over {timeout} s") from err
        except OSError as err:
            raise httpx2.ConnectError(f"{err.strerror or err}: {key[0]}:{key[1]}") from err
        self._all.add(conn)
        return conn, False

    async def _connect(self, key: tuple[str, int]) -> _Connection:
        loop = asyncio.get_running_loop()
        # One lookup per host, shared: hundreds of streams opening at once must not queue hundreds of lookups.
        resolving = self._addresses.get(key)
        if resolving is None:
            resolving = self._addresses[key] = asyncio.ensure_future(_resolve(loop, key))
        try:
            addresses = await asyncio.shield(resolving)
        except OSError:
            self._addresses.pop(key, None)
            raise
        error: OSError | None = None
        for family, address in addresses:
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                await loop.sock_connect(sock, address)
            except OSError as err:
                sock.close()
                error = err
                continue
            except BaseException:
                sock.close()
                raise
            if self._readers is None:
                self._readers = _Readers(loop)
            return _Connection(sock, self._readers)
        raise error or OSError(f"no address for {key[0]}")

    def release(self, key: tuple[str, int], conn: _Connection) -> None:
        if conn.reusable:
            conn.idle_since = monotonic()
            self._idle.setdefault(key, []).append(conn)
        else:
            self._discard(conn)

    def _discard(self, conn: _Connection) -> None:
        self._all.discard(conn)
        conn.close()

    async def aclose(self) -> None:
        for conn in list(self._all):
            self._discard(conn)
        self._idle.clear()
        if self._readers is not None:
            self._readers.close()
            self._readers = None


async def _resolve(loop: asyncio.AbstractEventLoop, key: tuple[str, int]) -> list[tuple[int, tuple[Any, ...]]]:
    infos = await loop.getaddrinfo(key[0], key[1], type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return [(family, address) for family, _type, _proto, _name, address in infos]
