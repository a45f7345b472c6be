"""One fixed load split across hosts: ``hpload run ... --shard I/N --start-at T``.

No coordinator: every host computes the whole load from the scenario's seeds and sends only its share of it (the
same :class:`~hpload.loadgen.loadrun.Share` that ``--workers`` uses on one host), starting at one agreed wall-clock
instant that each host maps once onto its own monotonic clock. Open loops: shard I sends arrivals I, I+N, I+2N, ...
of the one schedule; closed loops: shard I runs slots I, I+N, ... and numbers its requests I, I+N, ...; so the union
of the shards is exactly the single-host load, and request ids (``<run id>-<index>``) are unique and the same
whichever host sends them. Each shard's results directory holds its point and ``shard.json`` (run id, scenario
hash, I/N, the start instant on its own clock, how late it got there); ``hpload merge`` joins them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import socket
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from time import perf_counter_ns
from typing import Any

from hpload.errors import HploadError, ServerError, one_line
from hpload.loadgen.vocabulary import ShardMeta
from hpload.scenarios.results import write_json_atomic

SHARD_FILE = "shard.json"
BARRIER_POLL_S = 0.05
_RUN_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True)
class ShardPlan:
    index: int
    count: int
    run_id: str
    scenario_hash: str
    start_at: float | None  # Unix seconds; None = now (a single shard only)

    @property
    def name(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(value: str, shards: int | None, environ: dict[str, str] | None = None) -> tuple[int, int]:
    """``I/N``, or ``auto`` with ``--shards N`` and the index from ``JOB_COMPLETION_INDEX`` (a Kubernetes Indexed
    Job sets it in every pod)."""
    env = os.environ if environ is None else environ
    if value == "auto":
        if shards is None:
            raise HploadError("--shard auto: needs --shards N (the Job's completions); fix: add --shards N")
        raw = env.get("JOB_COMPLETION_INDEX")
        if raw is None:
            raise HploadError("--shard auto: JOB_COMPLETION_INDEX is not set (not in an Indexed Job pod); "
                              "fix: give --shard I/N")
        index_s, count = raw, shards
    else:
        m = re.fullmatch(r"(\d+)/(\d+)", value.strip())
        if m is None:
            raise HploadError(f"--shard {value}: not I/N; fix: e.g. --shard 0/3 (hosts numbered from 0)")
        index_s, count = m.group(1), int(m.group(2))
        if shards is not None and shards != count:
            raise HploadError(f"--shards {shards}: disagrees with --shard {value}; fix: drop --shards")
    if not index_s.isdigit():
        raise HploadError(f"JOB_COMPLETION_INDEX={index_s!r}: not a number; fix: run in an Indexed Job")
    index = int(index_s)
    if count < 1 or not 0 <= index < count:
        raise HploadError(f"--shard {index}/{count}: index must be 0..{count - 1}; fix: number hosts 0..N-1")
    return index, count


def parse_start_at(value: str) -> float:
    """Unix seconds, an ISO 8601 time (no zone = UTC), ``file:PATH`` (wait until PATH exists and holds one of those:
    a barrier, the launcher writes the start time once every host is up), or an http(s) URL (wait until it answers
    200 with one of those)."""
    if value.startswith(("http://", "https://")):
        return parse_start_at(_wait_for_url(value))
    if value.startswith("file:"):
        path = Path(value[5:])
        while True:
            try:
                text = path.read_text().strip()
            except FileNotFoundError:
                text = ""
            if text:
                return parse_start_at(text)
            time.sleep(BARRIER_POLL_S)
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise HploadError(f"--start-at {value}: neither Unix seconds nor ISO 8601; fix: e.g. --start-at "
                          "2026-12-04T20:00:00Z or --start-at $(date -d '+30 sec' +%s)") from None
    if when.tzinfo is None:
        from datetime import UTC

        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def _wait_for_url(url: str) -> str:
    import urllib.error
    import urllib.request

    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - the user's own barrier URL
                text = resp.read(200).decode(errors="replace").strip()
                if resp.status == 200 and text:
                    return text
        except (urllib.error.URLError, OSError):
            pass  # not up yet, or not released yet (404, 425, ...): keep polling
        time.sleep(BARRIER_POLL_S * 4)


def scenario_hash(scenario_dump: dict[str, Any]) -> str:
    """What every shard must agree on: the scenario less where results go (which differs per host)."""
    body = {k: v for k, v in scenario_dump.items() if k not in ("results_dir", "save_requests")}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def make_plan(args: argparse.Namespace, scenario_dump: dict[str, Any]) -> ShardPlan:
    index, count = parse_shard(args.shard, args.shards)
    start_at = parse_start_at(args.start_at) if args.start_at else None
    if start_at is None and count > 1:
        raise HploadError(f"--shard {index}/{count}: needs --start-at so that every shard starts at one instant; "
                          "fix: --start-at $(date -d '+30 sec' +%s) on every host, the same value")
    digest = scenario_hash(scenario_dump)
    run_id = args.run_id or f"{digest[:8]}-{int(round((start_at or time.time()) * 1000))}"
    if not _RUN_ID.match(run_id):
        raise HploadError(f"--run-id {run_id}: use 1-64 of A-Z a-z 0-9 _ . -; fix: a plain name")
    return ShardPlan(index, count, run_id, digest, start_at)


def run_shard_cli(args: argparse.Namespace, scenario: Any, results_dir: Path, progress: Any) -> int:
    """``hpload run --shard``: measure, print the point's summary and where the shard's results are."""
    import asyncio

    from hpload.loadgen.result import RunResult, format_table
    from hpload.scenarios.results import ResultStore

    if args.shard is None:
        raise HploadError("--shards/--start-at: only with --shard I/N (or --shard auto); fix: add --shard")
    if args.rerun:
        raise HploadError("--rerun: a shard always measures afresh; fix: drop --rerun")
    dump = scenario.model_dump(mode="json", exclude={"servers": {"__all__": {"api_key"}}})
    plan = make_plan(args, dump)
    print(f"hpload run: shard {plan.name} of run {plan.run_id} (scenario {plan.scenario_hash[:12]}) -> "
          f"{results_dir}", file=sys.stderr, flush=True)
    record = asyncio.run(run_shard(scenario, plan, results_dir, progress))
    if record.result_file:
        print(format_table(RunResult.load(ResultStore(results_dir).root / record.result_file)))
    print(f"shard {plan.name}: {results_dir}/{SHARD_FILE}; next: hpload merge DIR_0 ... DIR_{plan.count - 1} "
          "--results OUT")
    if not record.ok:
        raise HploadError(f"shard {plan.name} failed: {record.error}; fix: read the logs in {results_dir}/logs")
    return 0


async def run_shard(scenario: Any, plan: ShardPlan, results_dir: Path, progress: Any = None) -> Any:
    """Measure this host's share of the scenario's one point; save it, then ``shard.json`` (written last: a
    directory without it is not a finished shard)."""
    from hpload.gpu import GpuSampler
    from hpload.loadgen import run_load
    from hpload.loadgen.loadrun import Share
    from hpload.scenarios.points import expand
    from hpload.scenarios.results import ResultStore
    from hpload.scenarios.runner import ServerKeeper, make_record, target_for

    points = expand(scenario)
    if len(points) != 1:
        raise HploadError(f"--shard: scenario {scenario.name} has {len(points)} points (a sweep, repeats or several "
                          "servers); fix: shard one fixed load (one server, no [sweep], repeats = 1)")
    point = points[0]
    store = ResultStore(results_dir)
    store.prepare(scenario.model_dump(mode="json", exclude={"servers": {"__all__": {"api_key"}}}))
    (store.root / SHARD_FILE).unlink(missing_ok=True)
    keeper = ServerKeeper(workdir=store.root / "logs", listener=progress)
    if progress is not None:
        progress.point_started(1, 1, point)
    try:
        try:
            server = await keeper.ensure(point.server)
        except ServerError as err:
            raise HploadError(f"shard {plan.name}: {one_line(str(err), 300)}") from None
        start_ns = None
        if plan.start_at is not None:
            # The one place the wall clock is read: from here on, this host measures on its own monotonic clock.
            start_ns = perf_counter_ns() + int((plan.start_at - time.time()) * 1e9)
            wait_s = (start_ns - perf_counter_ns()) / 1e9
            if wait_s > 1:
                print(f"hpload run: shard {plan.name} of run {plan.run_id} starts in {wait_s:.1f} s",
                      file=sys.stderr, flush=True)
        requests_path = store.requests_path(point.point_id) if scenario.save_requests else None
        with GpuSampler() as gpu:
            result = await run_load(
                target_for(server, point.server), point.workload, point.load, slo=scenario.slo, observer=progress,
                requests_path=requests_path, share=Share(plan.index, plan.count), start_ns=start_ns,
                id_prefix=f"{plan.run_id}-",
            )  # fmt: skip
        result.gpu = gpu.summary()
        error = None
        if not server.alive():
            error = f"server {point.server.label} died during the run: {one_line(server.log_tail(20), 300)}"
    finally:
        await keeper.close()
    record = store.save(make_record(point, result, error), result)
    if progress is not None:
        progress.point_finished(1, 1, record, False)
    late = result.health.get("start_late_s")
    meta: ShardMeta = {
        "run_id": plan.run_id,
        "scenario_hash": plan.scenario_hash,
        "index": plan.index,
        "count": plan.count,
        "host": socket.gethostname(),
        "start_at": plan.start_at,
        "start_mono_ns": start_ns,
        "start_late_s": late,
        "point_id": point.point_id,
        "status": record.status,
    }
    write_json_atomic(store.root / SHARD_FILE, meta)
    return record
