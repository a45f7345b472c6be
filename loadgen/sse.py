"""Server-sent events decoding with no I/O: bytes in, events out (WHATWG HTML "event stream interpretation").

The caller timestamps each network read and feeds it here; every event completed by that read shares its timestamp.
Lines end in CRLF, LF or CR; a CR at the very end of a read may be the first half of a CRLF, so the decoder
remembers it and drops a leading LF of the next read.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SSEEvent:
    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None


class SSEDecoder:
    """Incremental decoder. ``feed(chunk)`` returns the events that chunk completed; ``close()`` drops a partial one."""

    __slots__ = ("_data", "_event", "_id", "_pending", "_retry", "_skip_lf")

    def __init__(self) -> None:
        self._pending = b""  # an incomplete line
        self._skip_lf = False  # the previous read ended in CR
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None
        self._retry: int | None = None

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if self._skip_lf and chunk[:1] == b"\n":
            chunk = chunk[1:]
        self._skip_lf = False
        if not chunk:
            return []
        if b"\r" not in chunk and b"\r" not in self._pending:
            return self._feed_lf(self._pending + chunk if self._pending else chunk)
        buf = self._pending + chunk if self._pending else chunk
        self._skip_lf = buf.endswith(b"\r")
        lines = buf.splitlines()
        self._pending = b"" if buf.endswith((b"\r", b"\n")) else lines.pop()
        events: list[SSEEvent] = []
        for line in lines:
            if not line:
                ev = self._dispatch()
                if ev is not None:
                    events.append(ev)
            else:
                self._field(line)
        return events

    def _feed_lf(self, buf: bytes) -> list[SSEEvent]:
        """LF-only streams (vLLM, uvicorn, most servers): split into blank-line-terminated blocks; a block that is
        one ``data: ...`` line (the usual LLM token event) becomes an event without the line machinery."""
        events: list[SSEEvent] = []
        if not self._pending and (self._data or self._event) and buf[:1] == b"\n":
            # The CR/CRLF path left an event open at a line end: this LF is the blank line that ends it.
            ev = self._dispatch()
            if ev is not None:
                events.append(ev)
            buf = buf[1:]
        *blocks, self._pending = buf.split(b"\n\n")
        for block in blocks:
            if not self._data and not self._event and block[:6] == b"data: " and b"\n" not in block:
                events.append(SSEEvent(block[6:].decode("utf-8", "replace")))
                continue
            for line in block.split(b"\n"):
                if line:
                    self._field(line)
                else:
                    ev = self._dispatch()
                    if ev is not None:
                        events.append(ev)
            ev = self._dispatch()
            if ev is not None:
                events.append(ev)
        return events

    def close(self) -> list[SSEEvent]:
        """End of stream: per the spec an unterminated event is discarded; returns [] (kept for symmetry)."""
        self._pending = b""
        self._data = []
        self._event = ""
        return []

    def _field(self, line: bytes) -> None:
        if line[:1] == b":":
            return  # comment (keep-alive ping)
        name, sep, value = line.partition(b":")
        if sep and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data.append(value.decode("utf-8", "replace"))
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        elif name == b"id":
            if b"\0" not in value:
                self._id = value.decode("utf-8", "replace")
        elif name == b"retry":
            if value.isdigit():
                self._retry = int(value)

    def _dispatch(self) -> SSEEvent | None:
        if not self._data:
            self._event = ""
            return None
        ev = SSEEvent("\n".join(self._data), self._event or "message", self._id, self._retry)
        self._data = []
        self._event = ""
        return ev
