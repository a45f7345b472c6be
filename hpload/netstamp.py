"""Kernel receive timestamps: when bytes reached this host, not when an event loop got round to reading them.

A single asyncio loop serving hundreds of streams reads them one after another; when a batching server sends the
next token of 256 streams at once, the last socket is read milliseconds after its bytes came in, and a timestamp
taken in user space carries that delay into TTFT and ITL. Linux stamps every received packet (``SO_TIMESTAMPNS``,
software timestamps, no NIC support needed; on loopback the stamp is taken inside the sender's ``send`` call) and
hands the stamp of the newest packet to ``recvmsg`` as ancillary data.

The stamp is on ``CLOCK_REALTIME``; :func:`recv` converts it to ``time.perf_counter_ns`` (``CLOCK_MONOTONIC`` on
Linux) with an offset sampled at each read, so an NTP step between arrival and read shifts at most that one stamp,
and the result is clamped to "not after now". Where the option is missing (other systems) or a read brings no
stamp, the read time is used: exactly the user-space stamp that was there before.
"""

from __future__ import annotations

import socket
import struct
import sys
from time import perf_counter_ns, time_ns

# Linux's values (asm-generic and x86): Python's socket module does not export them.
_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_TIMESPEC = struct.Struct("@qq")  # struct timespec on 64-bit Linux: tv_sec, tv_nsec
CMSG_SPACE = socket.CMSG_SPACE(_TIMESPEC.size) if hasattr(socket, "CMSG_SPACE") else 0
_NS = 1_000_000_000
_BRACKET_NS = 20_000


def enable(sock: socket.socket) -> bool:
    """Ask the kernel to stamp ``sock``'s received packets. False where it cannot (not Linux, or refused)."""
    if not sys.platform.startswith("linux") or not CMSG_SPACE:
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
    except OSError:
        return False
    return True


def recv(sock: socket.socket, bufsize: int, stamped: bool, offset_ns: int | None = None) -> tuple[bytes, int]:
    """One read: the bytes and, in ``perf_counter_ns`` units, when the newest of them reached this host.

    ``offset_ns``: :func:`realtime_offset`, when the caller reads many sockets in a row and has just sampled it.
    Raises what ``socket.recv`` raises (``BlockingIOError`` on a non-blocking socket with nothing to read).
    """
    if not stamped:
        data = sock.recv(bufsize)
        return data, perf_counter_ns()
    data, ancillary, _flags, _addr = sock.recvmsg(bufsize, CMSG_SPACE)
    now = perf_counter_ns()
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and len(payload) >= _TIMESPEC.size:
            sec, nsec = _TIMESPEC.unpack_from(payload)
            at = sec * _NS + nsec - (realtime_offset(now) if offset_ns is None else offset_ns)
            return data, at if at < now else now
    return data, now


def realtime_offset(before: int | None = None) -> int:
    """CLOCK_REALTIME minus perf_counter_ns, read between two monotonic reads: a preemption between the clock reads
    would otherwise shift a stamp by the time the process was off the CPU, so a wide bracket is read again. The
    offset changes only when the wall clock is stepped (NTP slews both clocks alike)."""
    if before is None:
        before = perf_counter_ns()
    for _ in range(3):
        real = time_ns()
        after = perf_counter_ns()
        if after - before < _BRACKET_NS:
            break
        before = after
    return real - (before + after) // 2
