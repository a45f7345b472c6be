"""One request, timed: send, read the SSE stream as bytes arrive, and classify any failure by kind.

Timestamps are in ``time.perf_counter_ns()`` units: a request starts when its bytes are handed to the kernel (or its
connection starts to open) and each chunk is stamped when its bytes reached this host, by the kernel's receive
timestamp (:mod:`hpload.loadgen.transport`), so the event loop's backlog never lands in the figures. A chunk
"carries a token" when its ``choices`` list is not empty, exactly as vLLM's bench client counts: a token's text may be
empty (the server's detokenizer holds back partial UTF-8, or a special token), yet it is still a token. ttft ends at
the first such chunk, e2el at the last one (the usage trailer, whose ``choices`` is empty, and ``[DONE]`` excluded).
"""

from __future__ import annotations

import asyncio
import json
from time import perf_counter_ns
from typing import Any

import httpx2

from hpload.loadgen.sse import SSEDecoder
from hpload.loadgen.transport import ARRIVAL_EXTENSION

# Error kinds, stable names: results and the TUI key on them.
CONNECT = "connect"
TIMEOUT = "timeout"
STREAM = "stream"  # an error event or error object inside a 200 reply, or a stream that ended before [DONE]
PROTOCOL = "protocol"  # a reply the client cannot parse: malformed SSE data, truncated or non-JSON bodies
DISCONNECT = "disconnect"  # the server closed or reset the connection mid-response, or broke HTTP framing
OTHER = "other"


class RequestRecord:
    """Everything measured about one request. Plain slots: tens of thousands may be in flight."""

    __slots__ = (
        "chunk_tokens",
        "done_ns",
        "error_kind",
        "error_msg",
        "expected_in",
        "first_ns",
        "index",
        "itl_ns",
        "last_ns",
        "request_id",
        "scheduled_ns",
        "send_ns",
        "status",
        "timed_out",
        "usage_in",
        "usage_out",
        "warmup",
    )

    def __init__(self, index: int, warmup: bool, scheduled_ns: int = 0, expected_in: int | None = None) -> None:
        self.index = index
        self.warmup = warmup
        self.scheduled_ns = scheduled_ns  # 0 in a closed loop
        self.expected_in = expected_in  # prompt tokens by the client tokenizer, when known
        self.send_ns = 0
        self.first_ns = 0
        self.last_ns = 0
        self.done_ns = 0
        self.itl_ns: list[int] = []
        self.chunk_tokens = 0
        self.usage_in: int | None = None
        self.usage_out: int | None = None
        self.status = 0
        self.error_kind: str | None = None
        self.error_msg = ""
        self.timed_out = False  # set by the watchdog just before it cancels the request
        self.request_id = ""  # sent as X-Request-Id when per-request records are kept, to join with server logs

    def fail(self, kind: str, msg: str) -> None:
        if self.error_kind is None:
            self.error_kind = kind
            self.error_msg = msg[:300]

    @property
    def ok(self) -> bool:
        return self.error_kind is None

    @property
    def ttft_ns(self) -> int:
        return self.first_ns - self.send_ns

    @property
    def e2el_ns(self) -> int:
        return self.last_ns - self.send_ns

    @property
    def output_tokens(self) -> int:
        return self.usage_out if self.usage_out is not None else self.chunk_tokens

    @property
    def tpot_ns(self) -> int | None:
        n = self.output_tokens
        if n <= 1 or not self.itl_ns and self.chunk_tokens <= 1:
            return None
        return (self.last_ns - self.first_ns) // (n - 1)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"i": self.index, "warmup": self.warmup, "ok": self.ok, "status": self.status}
        if self.request_id:
            out["request_id"] = self.request_id
        # perf_counter_ns is CLOCK_MONOTONIC: comparable with server-side monotonic stamps taken on the same host.
        out["send_ns"] = self.send_ns
        if self.scheduled_ns:
            out["schedule_lag_ms"] = (self.send_ns - self.scheduled_ns) / 1e6
        if self.ok:
            out.update(
                ttft_ms=self.ttft_ns / 1e6,
                e2el_ms=self.e2el_ns / 1e6,
                output_tokens=self.output_tokens,
                chunk_tokens=self.chunk_tokens,
                prompt_tokens=self.usage_in,
            )
            tpot = self.tpot_ns
            if tpot is not None:
                out["tpot_ms"] = tpot / 1e6
            if self.itl_ns:
                out["itl_ms"] = [gap / 1e6 for gap in self.itl_ns]  # as vLLM bench serve's --save-detailed "itls"
        else:
            out.update(error=self.error_kind, message=self.error_msg)
        return out


def classify(err: BaseException) -> str:
    """Map an httpx exception to an error kind."""
    if isinstance(err, httpx2.ConnectTimeout | httpx2.PoolTimeout):
        return TIMEOUT
    if isinstance(err, httpx2.ConnectError):
        return CONNECT
    if isinstance(err, httpx2.TimeoutException):
        return TIMEOUT
    if isinstance(err, httpx2.ProtocolError | httpx2.ReadError | httpx2.WriteError | ConnectionError):
        return DISCONNECT
    return OTHER


def _error_message(obj: dict[str, Any]) -> str | None:
    err = obj.get("error")
    if err is None:
        return None
    if isinstance(err, dict):
        return str(err.get("message") or err)
    return str(err)


async def send_request(
    client: httpx2.AsyncClient, url: str, body: bytes, headers: dict[str, str], rec: RequestRecord, stream: bool
) -> None:
    """Send one request and fill ``rec``. Never raises for request failures: they land in ``rec.error_kind``.

    A watchdog may cancel this task after setting ``rec.timed_out``; that cancellation is absorbed here and turns
    into a ``timeout`` failure. Any other cancellation (the run is stopping) propagates.
    """
    rec.send_ns = perf_counter_ns()
    try:
        async with client.stream("POST", url, content=body, headers=headers) as resp:
            rec.status = resp.status_code
            stamps = resp.extensions.get(ARRIVAL_EXTENSION)
            if stamps is not None and stamps.start_ns:
                rec.send_ns = stamps.start_ns  # when the bytes left, not when this task began building them
            if resp.status_code >= 400:
                detail = (await resp.aread())[:300].decode("utf-8", "replace")
                rec.fail(f"http_{resp.status_code // 100}xx", f"HTTP {resp.status_code}: {detail}")
                return
            if stream:
                await _read_stream(resp, rec, stamps)
            else:
                raw = await resp.aread()
                rec.first_ns = rec.last_ns = stamps.arrival_ns if stamps is not None else perf_counter_ns()
                _read_whole(raw, rec)
    except asyncio.CancelledError:
        if not rec.timed_out:
            raise
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        what = "first token" if not rec.first_ns else "next chunk"
        rec.fail(TIMEOUT, f"no {what} before the timeout")
    except (httpx2.HTTPError, OSError, ValueError) as err:
        rec.fail(classify(err), f"{type(err).__name__}: {err}")
    finally:
        rec.done_ns = perf_counter_ns()


async def _read_stream(resp: httpx2.Response, rec: RequestRecord, stamps: Any) -> None:
    """``stamps``: LeanTransport's body, with the kernel's arrival stamps (None under another transport)."""
    decoder = SSEDecoder()
    done = False
    itl = rec.itl_ns
    # LeanTransport's body is read directly: httpx's two wrapping generators cost more per chunk than the SSE parse.
    # httpx still closes the response (and so the body) when the request's context ends.
    async for chunk in stamps if stamps is not None else resp.aiter_raw():
        now = stamps.arrival_ns if stamps is not None else perf_counter_ns()
        for ev in decoder.feed(chunk):
            data = ev.data
            if data == "[DONE]":
                done = True
                continue
            if ev.event == "error":
                rec.fail(STREAM, f"error event: {data[:200]}")
                continue
            try:
                obj = json.loads(data)
            except ValueError:
                rec.fail(PROTOCOL, f"not JSON: {data[:200]}")
                continue
            if not isinstance(obj, dict):
                continue
            msg = _error_message(obj)
            if msg is not None:
                rec.fail(STREAM, f"error in stream: {msg}")
                continue
            choices = obj.get("choices")
            if choices:
                if rec.first_ns:
                    itl.append(now - rec.last_ns)
                else:
                    rec.first_ns = now
                rec.last_ns = now
                ids = choices[0].get("token_ids")  # present when the workload asks for return_token_ids
                rec.chunk_tokens += len(ids) if isinstance(ids, list) else 1
            usage = obj.get("usage")
            if usage:
                rec.usage_out = usage.get("completion_tokens")
                rec.usage_in = usage.get("prompt_tokens")
    if not done:
        rec.fail(STREAM, "stream ended before [DONE]")
    elif not rec.first_ns and rec.ok:
        rec.fail(STREAM, "stream carried no tokens")


def _read_whole(raw: bytes, rec: RequestRecord) -> None:
    try:
        obj = json.loads(raw)
    except ValueError:
        rec.fail(PROTOCOL, f"not JSON: {raw[:200]!r}")
        return
    msg = _error_message(obj) if isinstance(obj, dict) else "not an object"
    if msg is not None:
        rec.fail(STREAM, f"error in response: {msg}")
        return
    usage = obj.get("usage") or {}
    rec.usage_out = usage.get("completion_tokens")
    rec.usage_in = usage.get("prompt_tokens")
    rec.chunk_tokens = 1 if obj.get("choices") else 0
