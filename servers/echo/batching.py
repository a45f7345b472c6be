"""The echo server's batching mode: a continuous-batching inference server in miniature, so a capacity search has a
server whose true capacity can be computed (``hpload.scenarios.capacity_sim`` simulates the same model on its own).

The model (docs/capacity.md):

- Requests wait in one FIFO queue, in order of kernel arrival.
- The server runs steps back to back while it has work. At the start of a step it admits waiting requests (that
  arrived by then), oldest first, while fewer than ``max_batch`` are running.
- A step lasts ``step_ms + step_per_seq_ms * batch + prefill_ms_per_token * (prompt tokens admitted this step)``,
  where ``batch`` counts every running request (the newly admitted ones included).
- At the end of a step every running request gets one token (a newly admitted one its first: prefill yields the
  first token, as in vLLM); a request with all its tokens leaves the batch.
- With nothing running or waiting the server is idle; the next arrival starts a step at its arrival time.

Deadlines are absolute (a step ends at its start plus its length, the next starts there), so a late timer delays one
write, never the schedule after it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from time import perf_counter_ns
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable


@dataclass(frozen=True)
class BatchingModel:
    step_ms: float = 10.0
    step_per_seq_ms: float = 0.5
    max_batch: int = 16
    prefill_ms_per_token: float = 0.02

    def step_ns(self, batch: int, new_prompt_tokens: int) -> int:
        ms = self.step_ms + self.step_per_seq_ms * batch + self.prefill_ms_per_token * new_prompt_tokens
        return round(ms * 1e6)


class BatchedReply(Protocol):
    """One request inside the batch: told about each token as its step ends."""

    arrival_ns: int
    prompt_tokens: int
    n: int

    def token(self, i: int, due_ns: int) -> bool:
        """Write token ``i`` (due at ``due_ns``); False when the client is gone (the request leaves the batch)."""
        ...


class Batcher:
    """Runs the steps on the server's event loop. ``call_at(ns, fn)`` is the echo server's timer."""

    def __init__(self, model: BatchingModel, call_at: Callable[[int, Callable[[], None]], asyncio.TimerHandle]) -> None:
        self.model = model
        self._call_at = call_at
        self.waiting: deque[BatchedReply] = deque()
        self.running: list[tuple[BatchedReply, int]] = []  # (reply, tokens already written)
        self.step_end_ns = 0  # when the current (or last) step ends
        self.busy = False
        self.steps = 0

    def submit(self, reply: BatchedReply) -> None:
        self.waiting.append(reply)
        if not self.busy:
            # Idle: the step starts at the arrival (the kernel's stamp), not when the loop got round to it.
            self._start(max(reply.arrival_ns, self.step_end_ns))

    def _start(self, start_ns: int) -> None:
        model = self.model
        new_tokens = 0
        while self.waiting and len(self.running) < model.max_batch and self.waiting[0].arrival_ns <= start_ns:
            reply = self.waiting.popleft()
            self.running.append((reply, 0))
            new_tokens += reply.prompt_tokens
        if not self.running:
            # Only requests stamped after start_ns wait (a stamp can lead the loop's clock by a hair): start at theirs.
            if self.waiting:
                self._start(self.waiting[0].arrival_ns)
                return
            self.busy = False
            return
        self.busy = True
        self.steps += 1
        self.step_end_ns = start_ns + model.step_ns(len(self.running), new_tokens)
        self._call_at(self.step_end_ns, self._end)

    def _end(self) -> None:
        if perf_counter_ns() < self.step_end_ns:
            # The loop compares float seconds and may wake a few ns early: a token is never early.
            self._call_at(self.step_end_ns, self._end)
            return
        due = self.step_end_ns
        still: list[tuple[BatchedReply, int]] = []
        for reply, done in self.running:
            if not reply.token(done, due):
                continue
            if done + 1 < reply.n:
                still.append((reply, done + 1))
        self.running = still
        if self.running or self.waiting:
            self._start(due)
        else:
            self.busy = False

    def drop(self, reply: BatchedReply) -> None:
        """A client that left while waiting: it never enters the batch."""
        try:
            self.waiting.remove(reply)
        except ValueError:
            pass

    @property
    def queued(self) -> int:
        return len(self.waiting)


class BatchedStream:
    """An echo request served by the batcher: a stream (token chunks as steps end) or a whole reply (one write when
    its last token is due). ``conn`` is the echo server's connection."""

    __slots__ = ("arrival_ns", "conn", "head", "n", "payload", "prompt_tokens", "request_id", "tail", "token_bytes",
                 "writes")  # fmt: skip

    def __init__(
        self, conn: Any, n: int, prompt_tokens: int, arrival_ns: int, *, head: bytes = b"", token: bytes = b"",
        tail: bytes = b"", payload: bytes | None = None, request_id: str | None = None,
    ) -> None:  # fmt: skip
        self.conn = conn
        self.n = n
        self.prompt_tokens = prompt_tokens
        self.arrival_ns = arrival_ns
        self.head, self.token_bytes, self.tail, self.payload = head, token, tail, payload
        self.request_id = request_id
        self.writes: list[int] | None = [] if conn.shared.trace is not None and payload is None else None

    def token(self, i: int, due_ns: int) -> bool:
        conn = self.conn
        if conn.closed:
            return False
        final = i == self.n - 1
        now = perf_counter_ns()
        stats = conn.shared.stats
        if self.payload is None:
            data = self.tail if final else self.token_bytes
            conn._write(self.head + data if i == 0 else data)
            stats.late_pending_ns.append(now - due_ns)
            if self.writes is not None:
                self.writes.append(now)
            if i == 0:
                stats.observe_ttft((now - self.arrival_ns) / 1e9)
        elif final:
            conn._write(self.payload)
            stats.late_pending_ns.append(now - due_ns)
            stats.observe_ttft((now - self.arrival_ns) / 1e9)
        if final:
            stats.finished(self.prompt_tokens, self.n)
            trace = conn.shared.trace
            if trace is not None and self.writes is not None and not conn.closed:
                trace.add(self.request_id, self.arrival_ns, self.writes)
            conn._done()
        return not conn.closed


def gauges(batcher: Batcher) -> bytes:
    """vLLM's names, so a capacity search waits for idle the same way on both."""
    return (
        f"echo:num_requests_running {len(batcher.running)}\necho:num_requests_waiting {len(batcher.waiting)}\n"
        f"echo:num_steps_total {batcher.steps}\n"
    ).encode()


def add_arguments(parser: object) -> None:
    """The echo command's batching flags (argparse parser)."""
    add = parser.add_argument  # type: ignore[attr-defined]
    add("--batching", action="store_true", help="behave like a batching inference server (see docs/capacity.md)")
    add("--step-ms", type=float, default=BatchingModel.step_ms, help="batching: fixed time of one step")
    add("--step-per-seq-ms", type=float, default=BatchingModel.step_per_seq_ms,
        help="batching: step time added per running request")  # fmt: skip
    add("--max-batch", type=int, default=BatchingModel.max_batch, help="batching: most requests in one step")
    add("--prefill-ms-per-token", type=float, default=BatchingModel.prefill_ms_per_token,
        help="batching: step time added per prompt token admitted in the step")  # fmt: skip


def model_from_args(args: object) -> BatchingModel | None:
    if not getattr(args, "batching", False):
        return None
    model = BatchingModel(
        step_ms=args.step_ms, step_per_seq_ms=args.step_per_seq_ms,  # type: ignore[attr-defined]
        max_batch=args.max_batch, prefill_ms_per_token=args.prefill_ms_per_token,  # type: ignore[attr-defined]
    )  # fmt: skip
    if model.max_batch < 1 or min(model.step_ms, model.step_per_seq_ms, model.prefill_ms_per_token) < 0:
        raise ValueError("--max-batch must be >= 1 and --step-ms/--step-per-seq-ms/--prefill-ms-per-token >= 0")
    if model.step_ms + model.step_per_seq_ms <= 0:
        raise ValueError("--step-ms or --step-per-seq-ms must be > 0 (a step of no time never ends)")
    return model
