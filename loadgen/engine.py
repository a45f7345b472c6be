"""Drives one run: schedules requests, records them, publishes snapshots."""

from __future__ import annotations

import asyncio
from pathlib import Path

from hpload.loadgen.result import RunResult
from hpload.loadgen.snapshot import Observer
from hpload.loadgen.specs import SLO, LoadSpec, Target, WorkloadSpec


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
) -> RunResult:
    raise NotImplementedError("landing in the next commit")
