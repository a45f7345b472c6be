"""Multi-turn sessions on the chat endpoint: each turn's prompt is the whole history, with the assistant's REAL
replies (as streamed back in this run), then the turn's new user text.

A ShareGPT row is one turn's NEW text: the ``human`` values become user turns appended to the history and the
recorded ``gpt`` values are dropped (the server's own reply takes their place), so a prompt is never doubled by
sending a recorded reply and a real one. Generated sessions have ``session_turns`` user turns of ``turn_len`` tokens.

Turn k+1 is sent at max(its scheduled time, turn k's reply end + ``think_time_s``), where the schedule spaces turn
starts ``turn_gap_s`` apart from the session's start. With ``session_load = "sessions"``, ``load.concurrency``
counts sessions in flight (each slot runs one session at a time) and ``load.rate`` session starts per second; with
``"requests"``, concurrency counts requests in flight (a thinking session holds none, so new sessions start) and the
rate counts requests (sessions start rate / mean turns per second). ``num_requests`` counts turns.
Statistics per turn index land in ``result.config["workload_stats"]["turns"]``.
"""

from __future__ import annotations

import asyncio
import json
from time import perf_counter_ns
from typing import Any

import numpy as np

from hpload.loadgen.client import RequestRecord
from hpload.loadgen.conversations import Conversation, SessionSet
from hpload.loadgen.loadrun import LoadRun, _sleep_until

__all__ = ["Conversation", "SessionRun", "SessionSet"]


class SessionRun(LoadRun):
    """A LoadRun whose unit is a session: the closed loop's slots and the open loop's sends start sessions."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        assert isinstance(self.requests, SessionSet)
        self.conversations = self.requests.conversations
        self._sessions = 0
        self.turn_ttft_ms: dict[int, list[float]] = {}
        self.turn_prompt: dict[int, list[int]] = {}
        self.turn_failed: dict[int, int] = {}
        self._stop_sessions = False
        self._permits: asyncio.Semaphore | None = None
        self.session_spans: list[tuple[int, int, bool]] = []  # (turns done, duration ns, every turn done) per session

    async def _closed_loop(self) -> None:
        peak = self.load.peak_concurrency or 1
        slots = [i for i in range(peak) if i % self.share.count == self.share.index]
        if self.workload.session_load == "requests":
            await self._request_pool(len(slots))
            return

        async def slot() -> None:
            while not self._stop_sessions and perf_counter_ns() < self._end_ns:
                n = self._next_session()
                await self._session(n, 0)

        await asyncio.gather(*(slot() for _ in slots))

    def _next_session(self) -> int:
        """The next session number of this shard's share: shards of one load (hpload.scenarios.shards) take every
        N-th session, so no two hosts replay the same conversation and a session stays on one host."""
        n = self._sessions * self.share.count + self.share.index
        self._sessions += 1
        return n

    async def _request_pool(self, size: int) -> None:
        """``session_load = "requests"``: ``size`` requests in flight; a session thinking holds no permit, so a new
        session starts in its place (the semaphore is FIFO: waiting turns and new sessions take permits in order)."""
        self._permits = asyncio.Semaphore(size)
        tasks: set[asyncio.Task[None]] = set()
        while not self._stop_sessions and perf_counter_ns() < self._end_ns:
            await self._permits.acquire()
            if self._stop_sessions:
                self._permits.release()
                break
            task = asyncio.create_task(self._session(self._next_session(), 0, holds_permit=True))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _open_loop(self, schedule: list[int], warm: int) -> None:
        if self.workload.session_load == "requests":
            # The rate counts requests: sessions start that many times less often as they have turns on average.
            mean_turns = sum(len(c.user_turns) for c in self.conversations) / len(self.conversations)
            schedule = [int(t * mean_turns) for t in schedule]
        tasks = []
        for i in range(self.share.index, len(schedule), self.share.count):
            if self._stop_sessions or self._t0 + schedule[i] >= self._end_ns:
                break
            at = self._t0 + schedule[i]
            await _sleep_until(at)
            self._sessions += 1
            tasks.append(asyncio.create_task(self._session(i, at)))
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _session(self, n: int, start_ns: int, holds_permit: bool = False) -> None:
        begun = perf_counter_ns()
        done = await self._turns(n, start_ns, holds_permit)
        conv = self.conversations[n % len(self.conversations)]
        if done:
            self.session_spans.append((done, perf_counter_ns() - begun, done == len(conv.user_turns)))

    async def _turns(self, n: int, start_ns: int, holds_permit: bool) -> int:
        """Runs session ``n``'s turns; returns how many completed. ``holds_permit``: the first turn's request permit
        (requests mode) was taken by the caller."""
        conv = self.conversations[n % len(self.conversations)]
        spec = self.workload
        history: list[dict[str, str]] = []
        start_ns = start_ns or perf_counter_ns()
        prev_end = 0
        for k, text in enumerate(conv.user_turns):
            due = start_ns + int(k * spec.turn_gap_s * 1e9)
            if k:
                due = max(due, prev_end + int(spec.think_time_s * 1e9))
            await _sleep_until(due)
            permits = self._permits
            if permits is not None and not holds_permit:
                await permits.acquire()
            holds_permit = False
            now = perf_counter_ns()
            taken = self._take(now) if now < self._end_ns else None
            if taken is None:
                self._stop_sessions = True
                if permits is not None:
                    permits.release()
                return k
            index, warmup = taken
            history.append({"role": "user", "content": text})
            body: dict[str, Any] = {"model": self.target.model, "messages": history, "max_tokens": spec.max_tokens}
            if spec.stream:
                body["stream"] = True
                body["stream_options"] = {"include_usage": True}
            if spec.temperature is not None:
                body["temperature"] = spec.temperature
            if spec.ignore_eos:
                body["ignore_eos"] = True
            rec = RequestRecord(index * self.share.count + self.share.index, warmup,
                                scheduled_ns=start_ns if k == 0 and self.load.open_loop else 0)  # fmt: skip
            rec.reply = []
            try:
                await self._one(rec, body=json.dumps(body).encode())
            finally:
                if permits is not None:
                    permits.release()
            prev_end = rec.done_ns
            if not rec.ok:
                self.turn_failed[k] = self.turn_failed.get(k, 0) + 1
                return k  # without the real reply there is no history to go on with
            if not warmup:
                self.turn_ttft_ms.setdefault(k, []).append(rec.ttft_ns / 1e6)
                self.turn_prompt.setdefault(k, []).append(rec.usage_in or 0)
            history.append({"role": "assistant", "content": "".join(rec.reply)})
        return len(conv.user_turns)

    def turn_stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k in sorted(set(self.turn_ttft_ms) | set(self.turn_failed)):
            ttft = np.array(self.turn_ttft_ms.get(k, []))
            prompt = self.turn_prompt.get(k, [])
            out[str(k + 1)] = {
                "completed": len(ttft), "failed": self.turn_failed.get(k, 0),
                "median_ttft_ms": float(np.median(ttft)) if len(ttft) else None,
                "p99_ttft_ms": float(np.percentile(ttft, 99)) if len(ttft) else None,
                "mean_prompt_tokens": sum(prompt) / len(prompt) if prompt else None,
            }  # fmt: skip
        return out

    async def execute(self, **kwargs: Any) -> Any:
        result = await super().execute(**kwargs)
        stats = result.config.setdefault("workload_stats", {})
        spans = self.session_spans
        durations = sorted(d / 1e9 for _, d, _ in spans)
        stats["sessions"] = {
            "conversations": len(self.conversations), "started": self._sessions or None,
            "finished": sum(full for *_, full in spans), "cut": sum(not full for *_, full in spans),
            "mean_turns": sum(t for t, _, _ in spans) / len(spans) if spans else None,
            "median_duration_s": durations[len(durations) // 2] if durations else None,
        }  # fmt: skip
        stats["turns"] = self.turn_stats()
        return result
