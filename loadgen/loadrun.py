"""Drives one run in this process: sends on a schedule (open loop) or per slot (closed loop), records each request,
publishes progress through one seam (a :data:`Publish` callback), and watches for stalled requests.

The entry point is :func:`hpload.loadgen.run.run_load`; with ``load.workers > 1`` it goes through
:mod:`hpload.loadgen.workers`, whose processes each run a :class:`LoadRun` on their share of the same load. This
module imports neither, so loadgen's imports run one way: run -> workers -> loadrun.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import secrets
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from time import perf_counter_ns
from typing import IO, Any

import httpx2

from hpload.loadgen.client import RequestRecord, send_request
from hpload.loadgen.health import HealthMonitor
from hpload.loadgen.recorder import Recorder
from hpload.loadgen.replay import attach as attach_workload_stats
from hpload.loadgen.result import RunResult
from hpload.loadgen.schedule import closed_loop_levels, open_loop_schedule
from hpload.loadgen.snapshot import Observer
from hpload.loadgen.specs import SLO, LoadSpec, Target, WorkloadSpec
from hpload.loadgen.transport import LeanTransport
from hpload.loadgen.workload import PreparedRequest, endpoint_path

log = logging.getLogger(__name__)

STREAMS_PER_CLIENT = 32  # connections per httpx client: its pool scans every connection per request
WATCHDOG_PERIOD_S = 0.1


@dataclass(frozen=True)
class Share:
    """This process's part of the load: open-loop sends ``i`` with ``i % count == index``, closed-loop slots likewise,
    and its part of the request counts."""

    index: int = 0
    count: int = 1

    def split(self, n: int) -> int:
        return n // self.count + (1 if self.index < n % self.count else 0)

    def count_in(self, lo: int, hi: int) -> int:
        """How many of the load's request numbers lo..hi-1 are this process's (those equal to ``index`` modulo
        ``count``), so that warm-up and measured requests split by number: the shares then add up to exactly the
        single-process load, request for request."""

        def below(n: int) -> int:
            return 0 if n <= self.index else (n - self.index + self.count - 1) // self.count

        return below(hi) - below(lo)


def auth_headers(target: Target) -> dict[str, str]:
    return {"Authorization": f"Bearer {target.api_key}"} if target.api_key else {}


def run_config(target: Target, workload: WorkloadSpec, load: LoadSpec, slo: SLO | None) -> dict[str, Any]:
    return {
        "target": {"base_url": target.base_url, "model": target.model, "label": target.label},
        "workload": workload.model_dump(mode="json"),
        "load": load.model_dump(mode="json"),
        "slo": slo.model_dump(mode="json", exclude_none=True) if slo else None,
        "request_rate": load.rate if load.rate is not None else _loop_name(load),
        "max_concurrency": load.peak_concurrency if not load.open_loop else load.max_concurrency,
        "burstiness": load.burstiness,
    }


def _loop_name(load: LoadSpec) -> str:
    return "trace" if load.replay else "steps" if load.open_loop else "inf"


def make_clients(load: LoadSpec, streams: int, url: str = "http://") -> list[httpx2.AsyncClient]:
    """The HTTP clients for one process. Default: one httpx client over :class:`LeanTransport` (chosen by
    benchmarks/bench_loadgen_capacity.py). HTTPS targets, or ``HPLOAD_LOADGEN_TRANSPORT=httpcore``, get httpx's own
    pool, sharded, because that pool does work per connection on every request, so small pools scale better."""
    timeout = httpx2.Timeout(connect=load.connect_timeout_s, read=None, write=load.connect_timeout_s, pool=None)
    lean = url.startswith("http://") and os.environ.get("HPLOAD_LOADGEN_TRANSPORT", "lean") != "httpcore"
    if lean:
        transport = LeanTransport(keepalive_expiry_s=load.keepalive_expiry_s, connect_timeout_s=load.connect_timeout_s)
        return [httpx2.AsyncClient(transport=transport, timeout=timeout, trust_env=False)]
    shards = max(1, math.ceil(streams / STREAMS_PER_CLIENT))
    per_shard = math.ceil(streams / shards) + 4
    limits = httpx2.Limits(
        max_connections=None, max_keepalive_connections=per_shard, keepalive_expiry=load.keepalive_expiry_s
    )
    return [httpx2.AsyncClient(timeout=timeout, limits=limits, trust_env=False) for _ in range(shards)]


Publish = Callable[[Recorder, HealthMonitor, str], None]
"""Called every snapshot interval with the phase ("warmup", "measure"), and once with "done" after the result is
built: the one way progress leaves a run. A single process publishes snapshots to an observer
(:func:`snapshot_publisher`); a worker process sends deltas to its parent (hpload.loadgen.workers)."""


def snapshot_publisher(observer: Observer | None) -> Publish:
    """Snapshots for ``observer``; with no observer, only the folding that keeps memory flat."""

    def publish(recorder: Recorder, health: HealthMonitor, phase: str) -> None:
        if observer is None:
            if phase != "done":  # nobody watches, but buffered samples must still be folded in
                health.sample(recorder.interval_schedule_lag_p99_ms())
                recorder.fold()
            return
        lag_ms = recorder.cum["schedule_lag"].percentile_us(99) / 1000 if phase == "done" else (
            recorder.interval_schedule_lag_p99_ms())
        _notify(observer, recorder.snapshot(phase, health.sample(lag_ms)))

    return publish


class LoadRun:
    """One process's run. ``execute`` returns this process's result and publishes progress through ``publish``."""

    def __init__(
        self,
        target: Target,
        workload: WorkloadSpec,
        load: LoadSpec,
        requests: list[PreparedRequest],
        *,
        slo: SLO | None = None,
        requests_path: Path | None = None,
        share: Share = Share(),
        start_ns: int | None = None,
        id_prefix: str | None = None,
    ) -> None:
        if not requests:
            raise ValueError("no requests to send")
        self.target, self.workload, self.load, self.slo = target, workload, load, slo
        self.requests = requests
        self.share = share
        self.start_ns = start_ns
        self.url = target.base_url.rstrip("/") + endpoint_path(workload)
        self.headers = {"Content-Type": "application/json", "Accept-Encoding": "identity", **auth_headers(target)}
        self.recorder = Recorder(target.label, slo, workload.stream, export=share.count > 1)
        self.health = HealthMonitor()
        self.requests_path = requests_path
        self._out: IO[str] | None = None
        # Only with per-request records: an id is only worth sending when something keeps it.
        self._id_prefix = (id_prefix or f"hpload-{secrets.token_hex(4)}-") if requests_path is not None else ""
        self._inflight: dict[RequestRecord, asyncio.Task[Any]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._issued = 0
        self._measured = 0  # requests issued outside the warm-up: num_requests counts these
        warm = load.warmup_requests
        self._warmup_n = share.count_in(0, warm)
        self._limit_n = share.count_in(warm, warm + load.num_requests) if load.num_requests is not None else None
        self._clients: list[httpx2.AsyncClient] = []
        self._t0 = 0
        self._end_ns = 0
        self._warm_end_ns = 0
        self._drained = 0
        # (scheduled, sent) ns pairs, flat: 16 bytes a request, so an hour at 500 req/s stays under 30 MB.
        self._sends: array[int] | None = array("q") if load.open_loop else None

    # ---- the run ----
    async def execute(
        self,
        *,
        publish: Publish | None = None,
        snapshot_interval_s: float = 0.5,
        stop: asyncio.Event | None = None,
    ) -> RunResult:
        load = self.load
        publish = publish or snapshot_publisher(None)
        started_at = datetime.now(UTC).isoformat(timespec="seconds")
        if load.replay:
            from hpload.loadgen.traces import replay_schedule

            schedule, warm = replay_schedule(self.requests, load)
            streams = load.max_concurrency or 256
        elif load.open_loop:
            schedule, warm = open_loop_schedule(load)
            streams = load.max_concurrency or 256
        else:
            schedule, warm = [], 0
            streams = load.peak_concurrency or 1
        streams = max(1, math.ceil(streams / self.share.count))
        self._clients = make_clients(load, streams, self.url)
        if self.requests_path is not None:
            self.requests_path.parent.mkdir(parents=True, exist_ok=True)
            self._out = self.requests_path.open("w")
        now = perf_counter_ns()
        self._t0 = self.start_ns if self.start_ns is not None else now
        if self._t0 > now:
            await asyncio.sleep((self._t0 - now) / 1e9)
            self.health = HealthMonitor()  # CPU % over the sending, not diluted by the wait for a shared start
        # A shard that reaches the common start instant late keeps the common timeline (its backlog goes out at
        # once, and schedule lag shows it); how late is kept so a merge can flag it.
        start_late_s = max(0, perf_counter_ns() - self._t0) / 1e9 if self.start_ns is not None else None
        self._warm_end_ns = self._t0 + int(load.warmup_s * 1e9)
        measure_s = load.measure_s
        if load.steps:
            self._end_ns = self._t0 + int((load.ramp_s + (measure_s or 0.0)) * 1e9)
        elif measure_s is not None:
            self._end_ns = self._warm_end_ns + int(measure_s * 1e9)
        else:
            self._end_ns = 2**62  # bounded by num_requests only

        try:
            await self._supervise(schedule, warm, publish, snapshot_interval_s, stop)
        finally:
            # Also when cancelled from outside (Ctrl-C): nothing may go on sending through the clients closed below.
            self._cancel_requests()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            for client in self._clients:
                await client.aclose()
            if self._out is not None:
                self._out.close()
        sched_p99 = self.recorder.cum["schedule_lag"].percentile_us(99) / 1000
        result = self.recorder.result(run_config(self.target, self.workload, load, self.slo), started_at)
        result.health = self.health.summary(sched_p99 if load.max_concurrency is None else 0.0)
        attach_workload_stats(result, self.requests, self._sends)
        if start_late_s is not None:
            result.health["start_late_s"] = start_late_s
        if self._drained:
            result.warnings.append(
                f"{self._drained} requests still in flight {load.drain_timeout_s:g} s after the run's end were cut"
                " (counted as incomplete)"
            )
        if self.recorder.counters.get("completed", 0) == 0 and self.recorder.errors:
            kind, msg = next(iter(self.recorder.error_samples.items()))
            result.warnings.append(f"every request failed; first {kind}: {msg}")
        result.warnings += [f"{name} histogram overflowed {n} times" for name, n in result.histogram_overflows.items()]
        publish(self.recorder, self.health, "done")
        return result

    async def _supervise(
        self, schedule: list[int], warm: int, publish: Publish, interval_s: float, stop: asyncio.Event | None
    ) -> None:
        """The driver and its helpers in one task group: the run ends when the driver finishes, ``stop`` is set, or
        the drain deadline passes; then everything left is cancelled and the group waits for all of it. A helper
        that fails ends the run with its own exception."""
        load = self.load
        try:
            async with asyncio.TaskGroup() as group:
                driver = group.create_task(self._open_loop(schedule, warm) if load.open_loop else self._closed_loop())
                helpers: list[asyncio.Task[Any]] = [
                    group.create_task(self.health.probe()),
                    group.create_task(self._watchdog()),
                    group.create_task(self._ticker(publish, interval_s)),
                ]
                waiting: set[asyncio.Task[Any]] = {driver}
                stopper = group.create_task(stop.wait()) if stop is not None else None
                if stopper is not None:
                    helpers.append(stopper)
                    waiting.add(stopper)
                if self._end_ns < 2**62:
                    # The duration bound holds even against a hung server whose requests would outlive their timeouts.
                    deadline = group.create_task(_sleep_until(self._end_ns + int(load.drain_timeout_s * 1e9)))
                    helpers.append(deadline)
                    waiting.add(deadline)
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if not driver.done():
                    if not (stopper is not None and stopper.done()):
                        self._drained = len(self._inflight)  # the drain deadline, not a stop, ended the run
                    driver.cancel()
                self._cancel_requests()
                if self._tasks:
                    await asyncio.gather(*self._tasks, return_exceptions=True)
                for task in helpers:
                    task.cancel()
        except BaseExceptionGroup as group_error:
            raise group_error.exceptions[0] from None  # one failure surfaces as itself, as before the task group

    def _cancel_requests(self) -> None:
        for task in list(self._tasks) + list(self._inflight.values()):
            task.cancel()

    async def _closed_loop(self) -> None:
        levels = closed_loop_levels(self.load)
        peak = self.load.peak_concurrency or 1
        slots = [i for i in range(peak) if i % self.share.count == self.share.index]
        await asyncio.gather(*(self._slot(i, peak, levels) for i in slots))

    async def _slot(self, slot: int, peak: int, levels: list[tuple[float, int]]) -> None:
        if self.load.ramp_s > 0:
            await _sleep_until(self._t0 + int(self.load.ramp_s * 1e9 * slot / peak))
        while True:
            now = perf_counter_ns()
            if now >= self._end_ns:
                return
            level, next_change_ns = self._level_at(now, levels)
            if slot >= level:
                await _sleep_until(min(next_change_ns, self._end_ns))
                continue
            taken = self._take(now)
            if taken is None:
                return
            index, warmup = taken
            await self._one(RequestRecord(index * self.share.count + self.share.index, warmup))

    def _level_at(self, now_ns: int, levels: list[tuple[float, int]]) -> tuple[int, int]:
        offset = self._t0 + int(self.load.ramp_s * 1e9) if self.load.steps else self._t0
        level, next_change = levels[0][1], 2**62
        for start_s, conc in levels:
            at = offset + int(start_s * 1e9)
            if at <= now_ns:
                level = conc
            else:
                next_change = at
                break
        return level, next_change

    def _take(self, now_ns: int) -> tuple[int, bool] | None:
        """The next per-process request number and whether it is warm-up, or None once the measured count is
        reached. ``num_requests`` counts measured requests only, whether the warm-up is counted in requests or in
        seconds, so a timed warm-up never eats the measured phase."""
        warmup = self._issued < self._warmup_n or now_ns < self._warm_end_ns
        if not warmup and self._limit_n is not None and self._measured >= self._limit_n:
            return None
        self._issued += 1
        self._measured += not warmup
        return self._issued - 1, warmup

    async def _open_loop(self, schedule: list[int], warm: int) -> None:
        cap = self.load.max_concurrency
        sem = asyncio.Semaphore(max(1, self.share.split(cap))) if cap else None
        for i in range(self.share.index, len(schedule), self.share.count):
            at = self._t0 + schedule[i]
            delay_ns = at - perf_counter_ns()
            if delay_ns > 0:
                await asyncio.sleep(delay_ns / 1e9)
            if sem is not None:
                await sem.acquire()
            rec = RequestRecord(i, i < warm, scheduled_ns=at)
            task = asyncio.create_task(self._one(rec, sem))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _one(self, rec: RequestRecord, sem: asyncio.Semaphore | None = None, body: bytes | None = None) -> None:
        if body is None:  # a session's turn brings its own body, built from the history
            req = self.requests[rec.index % len(self.requests)]
            rec.expected_in = req.expected_in
            body = req.body
        client = self._clients[rec.index % len(self._clients)]
        headers = self.headers
        if self._id_prefix:
            rec.request_id = f"{self._id_prefix}{rec.index}"
            headers = {**headers, "X-Request-Id": rec.request_id}
        recorder = self.recorder
        recorder.started += 1
        recorder.in_flight += 1
        task = asyncio.current_task()
        assert task is not None
        self._inflight[rec] = task
        try:
            await send_request(client, self.url, body, headers, rec, self.workload.stream)
        except asyncio.CancelledError:
            if not rec.warmup:
                recorder.counters["incomplete"] += 1
            raise
        finally:
            recorder.in_flight -= 1
            del self._inflight[rec]
            if sem is not None:
                sem.release()
        recorder.record(rec)
        if self._sends is not None and rec.send_ns and rec.scheduled_ns:
            self._sends.extend((rec.scheduled_ns, rec.send_ns))
        if self._out is not None:
            self._out.write(json.dumps(rec.to_json()) + "\n")

    async def _watchdog(self) -> None:
        """Cancel requests with no first token / no new token for too long: a stalled stream must not hang a run."""
        first_ns = int(self.load.first_token_timeout_s * 1e9)
        idle_ns = int(self.load.idle_timeout_s * 1e9)
        while True:
            await asyncio.sleep(WATCHDOG_PERIOD_S)
            now = perf_counter_ns()
            for rec, task in list(self._inflight.items()):
                if not rec.send_ns or rec.timed_out:
                    continue
                late = now - rec.send_ns > first_ns if not rec.first_ns else now - rec.last_ns > idle_ns
                if late:
                    rec.timed_out = True
                    task.cancel()

    async def _ticker(self, publish: Publish, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            if self._out is not None:
                self._out.flush()
            warming = self.recorder.warming and (self.load.warmup_s > 0 or self.load.warmup_requests > 0)
            publish(self.recorder, self.health, "warmup" if warming else "measure")


def _notify(observer: Observer, snap: Any) -> None:
    try:
        observer(snap)
    except Exception:
        # A broken view must not end the measurement; its traceback goes to the log once per failure.
        log.exception("snapshot observer failed")


async def _sleep_until(at_ns: int) -> None:
    delay = at_ns - perf_counter_ns()
    if delay > 0:
        await asyncio.sleep(delay / 1e9)
