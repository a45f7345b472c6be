"""``workers > 1``: several client processes share one load and produce one result.

Each worker runs a :class:`~hpload.loadgen.loadrun.LoadRun` on its :class:`~hpload.loadgen.loadrun.Share` (every N-th
open-loop send of the one seeded schedule, or every N-th closed-loop slot) from a common start time
(``perf_counter_ns`` is CLOCK_MONOTONIC, shared by all processes on the host). Workers send recorder deltas a few
times a second; the parent folds them into one live view and, at the end, merges the workers' results. If a worker
dies, the deltas it already sent stand in for its result, so nothing it recorded is lost.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import queue
import signal
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from time import perf_counter_ns
from typing import Any

from hpload.loadgen.health import HealthMonitor
from hpload.loadgen.loadrun import LoadRun, Share, _notify, run_config
from hpload.loadgen.recorder import Recorder
from hpload.loadgen.replay import merge_stats as merge_workload_stats
from hpload.loadgen.result import RunResult, merge_health
from hpload.loadgen.snapshot import ClientHealth, Observer
from hpload.loadgen.specs import SLO, LoadSpec, Target, WorkloadSpec
from hpload.loadgen.workload import build_requests

START_MARGIN_S = 0.2  # between "all workers ready" and the first send
JOIN_GRACE_S = 10.0


def worker_requests_path(path: Path | None, index: int) -> Path | None:
    return None if path is None else path.with_name(f"{path.stem}.w{index}{path.suffix}")


async def run_workers(
    target: Target,
    workload: WorkloadSpec,
    load: LoadSpec,
    *,
    slo: SLO | None,
    observer: Observer | None,
    snapshot_interval_s: float,
    stop: asyncio.Event | None,
    requests_path: Path | None,
    share: Share | None = None,
    start_ns: int | None = None,
    id_prefix: str | None = None,
) -> RunResult:
    ctx = mp.get_context("spawn")  # fork would copy the parent's event loop and threads
    n = load.workers
    q: Any = ctx.Queue()
    go = ctx.Event()
    halt = ctx.Event()
    start_at = ctx.Value("q", 0)
    args = (target, workload.model_dump(), load.model_dump(), slo.model_dump() if slo else None, snapshot_interval_s)
    # Inside a shard of a multi-host load, worker i of this host takes every (shards * workers)-th send.
    base = share or Share()
    procs = [
        ctx.Process(
            target=_worker_main,
            args=(
                i, n, *args, worker_requests_path(requests_path, i), q, go, halt, start_at, (base.index, base.count),
                id_prefix, os.getpid(),
            ),
            name=f"hpload-loadgen-{i}",
            daemon=True,
        )
        for i in range(n)
    ]
    for p in procs:
        p.start()
    total = Recorder(target.label, slo, workload.stream)
    parts = {i: Recorder(target.label, slo, workload.stream) for i in range(n)}
    health: dict[int, dict[str, Any]] = {}
    results: dict[int, RunResult] = {}
    failures: list[str] = []
    lost: set[int] = set()
    ready: set[int] = set()
    loop = asyncio.get_running_loop()
    next_snap = 0.0
    phase = "warmup"
    try:
        while len(results) + len(lost) < n:
            if stop is not None and stop.is_set():
                halt.set()
            try:
                kind, idx, payload = await loop.run_in_executor(None, _get, q)
            except queue.Empty:
                for i, p in enumerate(procs):
                    if not p.is_alive() and i not in results and i not in lost:
                        lost.add(i)
                        failures.append(f"worker {i} exited with code {p.exitcode} before sending its result")
                        go.set()  # never leave the others waiting for it
            else:
                if kind == "ready":
                    ready.add(idx)
                    if len(ready) == n:
                        start_at.value = start_ns or perf_counter_ns() + int(START_MARGIN_S * 1e9)
                        go.set()
                elif kind == "delta":
                    delta, health[idx], phase = payload
                    total.absorb(delta, idx)
                    parts[idx].absorb(delta, idx)
                elif kind == "result":
                    results[idx] = RunResult.from_dict(payload)
                elif kind == "error" and idx not in lost:
                    lost.add(idx)
                    failures.append(f"worker {idx} failed: {payload}")
                    go.set()
            now = loop.time()
            if observer is not None and now >= next_snap and health:
                next_snap = now + snapshot_interval_s
                _notify(observer, total.snapshot(phase, _merged_health(health)))
    finally:
        halt.set()
        go.set()
        for p in procs:
            await loop.run_in_executor(None, p.join, JOIN_GRACE_S)
            if p.is_alive():
                p.terminate()
                await loop.run_in_executor(None, p.join, 2.0)
            if p.is_alive():
                p.kill()
    config = run_config(target, workload, load, slo)
    pieces = []
    for i in range(n):
        if i in results:
            pieces.append(results[i])
        elif parts[i].started:
            pieces.append(parts[i].result(config, ""))  # what a lost worker had already reported
    if not pieces:
        raise RuntimeError("; ".join(failures) or "no worker produced a result")
    merged = RunResult.merge(pieces)
    merged.workers = n
    merged.config = config
    merge_workload_stats(pieces, merged)
    merged.warnings += failures
    if start_ns is not None:
        late = [float(r.health.get("start_late_s", 0.0)) for r in results.values()]
        merged.health["start_late_s"] = max(late, default=0.0)
    if observer is not None:
        _notify(observer, total.snapshot("done", _merged_health(health)))
    return merged


def _get(q: Any) -> Any:
    return q.get(timeout=0.1)


def _merged_health(per_worker: dict[int, dict[str, Any]]) -> ClientHealth:
    h = merge_health(list(per_worker.values()))
    warnings = h.get("warnings") or []
    return ClientHealth(
        h["cpu_percent"],
        h["loop_lag_p99_ms"],
        h["schedule_lag_p99_ms"],
        h["bottleneck"],
        warnings[0] if warnings else None,
    )


def _worker_main(
    index: int,
    count: int,
    target: Target,
    workload_raw: dict[str, Any],
    load_raw: dict[str, Any],
    slo_raw: dict[str, Any] | None,
    interval_s: float,
    requests_path: Path | None,
    q: Any,
    go: MpEvent,
    halt: MpEvent,
    start_ns: Any,
    base: tuple[int, int] = (0, 1),
    id_prefix: str | None = None,
    parent: int = 0,
) -> None:
    # The parent owns Ctrl-C (a terminal sends SIGINT to the whole process group, workers included): it halts the
    # workers, which then finish and report what they measured, instead of each dying with a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if parent:
        # A SIGKILLed hpload cannot stop its workers; without this they would go on loading the server.
        from hpload.pdeath import arm_in_child

        arm_in_child(parent)
    try:
        asyncio.run(
            _worker(
                index, count, target, workload_raw, load_raw, slo_raw, interval_s, requests_path, q, go, halt, start_ns,
                base, id_prefix,
            )
        )
    except BaseException as err:  # report any failure to the parent instead of dying silently
        q.put(("error", index, f"{type(err).__name__}: {err}"))
        raise


async def _worker(
    index: int,
    count: int,
    target: Target,
    workload_raw: dict[str, Any],
    load_raw: dict[str, Any],
    slo_raw: dict[str, Any] | None,
    interval_s: float,
    requests_path: Path | None,
    q: Any,
    go: MpEvent,
    halt: MpEvent,
    start_ns: Any,
    base: tuple[int, int] = (0, 1),
    id_prefix: str | None = None,
) -> None:
    workload = WorkloadSpec.model_validate(workload_raw)
    load = LoadSpec.model_validate(load_raw)
    slo = SLO.model_validate(slo_raw) if slo_raw else None
    requests = build_requests(workload, target)
    q.put(("ready", index, None))
    await asyncio.get_running_loop().run_in_executor(None, go.wait)
    if halt.is_set():
        return
    run = LoadRun(
        target, workload, load, requests, slo=slo, requests_path=requests_path,
        share=Share(base[0] + base[1] * index, base[1] * count), start_ns=int(start_ns.value) or None,
        id_prefix=id_prefix,
    )  # fmt: skip
    stop = asyncio.Event()

    def tick(recorder: Recorder, health: HealthMonitor, phase: str) -> None:
        if halt.is_set():
            stop.set()
        sample = health.sample(recorder.interval_schedule_lag_p99_ms())
        h = {
            "cpu_percent": sample.cpu_percent,
            "loop_lag_p99_ms": sample.loop_lag_ms,
            "schedule_lag_p99_ms": sample.schedule_lag_ms,
            "bottleneck": sample.bottleneck,
            "warnings": [sample.warning] if sample.warning else [],
        }
        q.put(("delta", index, (recorder.delta(), h, phase)))

    # The parent's halt is seen at the next tick (every interval_s): soon enough, and no polling task.
    result = await run.execute(publish=tick, snapshot_interval_s=interval_s, stop=stop)
    q.put(("result", index, result.to_dict()))
