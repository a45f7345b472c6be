"""``run_load``: one run against one target, in this process (:class:`~hpload.loadgen.loadrun.LoadRun`) or over
several worker processes (:mod:`hpload.loadgen.workers`), with the server's own metrics scraped around it."""

from __future__ import annotations

import asyncio
from pathlib import Path

from hpload.errors import HploadError
from hpload.loadgen import prom
from hpload.loadgen.loadrun import LoadRun, Share, auth_headers, snapshot_publisher
from hpload.loadgen.replay import attach_server as attach_server_stats
from hpload.loadgen.result import RunResult
from hpload.loadgen.snapshot import Observer
from hpload.loadgen.specs import SLO, LoadSpec, Target, WorkloadSpec
from hpload.loadgen.workload import build_requests


async def run_load(
    target: Target,
    workload: WorkloadSpec,
    load: LoadSpec,
    *,
    slo: SLO | None = None,
    observer: Observer | None = None,
    snapshot_interval_s: float = 0.5,
    stop: asyncio.Event | None = None,
    requests_path: Path | None = None,
    share: Share | None = None,
    start_ns: int | None = None,
    id_prefix: str | None = None,
) -> RunResult:
    """Run one load against one target and return the result (also when ``stop`` ends it early).

    ``share``, ``start_ns`` and ``id_prefix`` make this run one shard of a load split across hosts
    (:mod:`hpload.scenarios.shards`): its part of the load, from that instant of ``perf_counter_ns``, with request
    ids every shard derives alike.

    ``observer`` receives a :class:`~hpload.loadgen.snapshot.Snapshot` every ``snapshot_interval_s`` and a final one
    with ``phase == "done"``. ``requests_path`` gets one JSON line per request (one file per worker process), with
    its inter-token gaps, and each request is sent with an ``X-Request-Id`` that its line repeats.
    """
    metrics_url = target.metrics_url or target.base_url.rstrip("/") + "/metrics"
    headers = auth_headers(target)
    before = await prom.scrape(metrics_url, headers)
    if load.workers > 1 and workload.source == "sessions":
        raise HploadError("load.workers: sessions run in one client process; fix: workers = 1")
    if load.workers > 1:
        from hpload.loadgen.workers import run_workers  # spawns processes: only for workers > 1

        result = await run_workers(
            target, workload, load, slo=slo, observer=observer, snapshot_interval_s=snapshot_interval_s,
            stop=stop, requests_path=requests_path, share=share, start_ns=start_ns, id_prefix=id_prefix,
        )  # fmt: skip
    else:
        requests = await asyncio.to_thread(build_requests, workload, target)
        run_cls = LoadRun
        if workload.source == "sessions":
            from hpload.loadgen.sessions import SessionRun

            run_cls = SessionRun
        run = run_cls(
            target, workload, load, requests, slo=slo, requests_path=requests_path, share=share or Share(),
            start_ns=start_ns, id_prefix=id_prefix,
        )  # fmt: skip
        result = await run.execute(publish=snapshot_publisher(observer), snapshot_interval_s=snapshot_interval_s,
                                   stop=stop)
    after = await prom.scrape(metrics_url, headers) if before is not None else None
    result.server_metrics = prom.server_side(before, after)
    attach_server_stats(result)
    gap = prom.ttft_gap_warning(float(result.summary.get("mean_ttft_ms", 0.0)), result.server_metrics)
    if gap:
        result.warnings.append(gap)
    return result
