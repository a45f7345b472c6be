"""``hpload merge DIR... --results OUT``: one result from the shards of one load (``hpload run --shard I/N``).

Counters and HdrHistograms merge exactly as ``--workers`` results do (:meth:`RunResult.merge`, whose counters follow
the one rule, :func:`hpload.loadgen.vocabulary.merge_counters`). Each host measured
on its own monotonic clock, so the two counters that are instants (first send, last reply) are first put on the
shared timeline: nanoseconds since the common start instant, which every shard recorded on its own clock. The
merged duration is then as good as the hosts' wall clocks agree at the start (NTP: about a millisecond).
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from hpload.errors import HploadError
from hpload.loadgen.vocabulary import BOUND_COUNTERS, ShardEntry, ShardsInfo, as_summary

DEFAULT_LATE_LIMIT_S = 0.1


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="the results directory of every shard (hpload run --shard)")
    parser.add_argument("--results", required=True, metavar="OUT", help="results directory for the merged result")
    parser.add_argument("--late-limit-s", type=float, default=DEFAULT_LATE_LIMIT_S, metavar="S",
                        help=f"flag a shard that began sending more than S seconds after --start-at "
                        f"(default {DEFAULT_LATE_LIMIT_S:g})")


class Shard:
    def __init__(self, root: Path) -> None:
        from hpload.scenarios.results import ResultStore
        from hpload.scenarios.shards import SHARD_FILE

        self.root = root
        try:
            self.meta: dict[str, Any] = json.loads((root / SHARD_FILE).read_text())
        except (OSError, ValueError):
            raise HploadError(f"{root}: no readable {SHARD_FILE} (not a finished shard); fix: give directories "
                              "that 'hpload run --shard I/N' completed") from None
        self.store = ResultStore(root)
        missing = [k for k in ("run_id", "scenario_hash", "index", "count", "point_id") if k not in self.meta]
        if missing:
            raise HploadError(f"{root / SHARD_FILE}: lacks {', '.join(missing)}; fix: run that shard again")
        self.index = int(self.meta["index"])
        self.count = int(self.meta["count"])
        self.name = f"{self.index}/{self.count}"
        record = self.store.get(str(self.meta["point_id"]))
        if record is None or not record.result_file:
            raise HploadError(f"{root}: shard {self.name} has no result for point {self.meta['point_id']}; "
                              "fix: run that shard again")
        self.record = record
        self.result = self.store.load_result(record)


def check(shards: list[Shard]) -> None:
    """One line naming the first shard that is missing, given twice, or from another run or scenario."""
    first = shards[0]
    for s in shards[1:]:
        for key, what in (("run_id", "run id"), ("scenario_hash", "scenario hash"), ("count", "shard count")):
            if s.meta[key] != first.meta[key]:
                raise HploadError(f"{s.root}: shard {s.name} has {what} {s.meta[key]!s:.16} but {first.root} has "
                                  f"{first.meta[key]!s:.16}; fix: merge the shards of one run only")
    seen: dict[int, Shard] = {}
    for s in shards:
        if s.index in seen:
            raise HploadError(f"shard {s.name} given twice ({seen[s.index].root} and {s.root}); "
                              "fix: give each shard's directory once")
        seen[s.index] = s
    missing = [i for i in range(first.count) if i not in seen]
    if missing:
        raise HploadError(f"shard {missing[0]}/{first.count} of run {first.meta['run_id']} is missing; "
                          "fix: add its results directory (or rerun that shard with the same --start-at)")


def merge_shards(shards: list[Shard], late_limit_s: float) -> tuple[Any, ShardsInfo]:
    from hpload.loadgen.result import RunResult

    shards = sorted(shards, key=lambda s: s.index)
    parts = []
    per_shard: list[ShardEntry] = []
    flags: list[str] = []
    for s in shards:
        r = s.result
        base = s.meta.get("start_mono_ns")
        if base is not None:
            for key in BOUND_COUNTERS:  # the instants: first send, last reply
                if key in r.counters:
                    r.counters[key] = r.counters[key] - int(base)
        parts.append(r)
        late = s.meta.get("start_late_s")
        health = {k: v for k, v in r.health.items() if k != "shards"}
        per_shard.append({
            "index": s.index, "host": s.meta.get("host"), "dir": str(s.root), "start_late_s": late,
            "request_throughput": r.summary["request_throughput"], "completed": r.summary["completed"],
            "health": health,
        })  # fmt: skip
        who = f"shard {s.name} ({s.meta.get('host')})"
        if health.get("bottleneck"):
            why = "; ".join(health.get("warnings") or []) or "client health check"
            flags.append(f"{who}: its client was the bottleneck ({why})")
        if late is not None and float(late) > late_limit_s:
            flags.append(f"{who} started {float(late):.2f} s late (limit {late_limit_s:g} s): its first sends went "
                         "out in a burst, so the load was not the one asked for")
    merged = RunResult.merge(parts)
    merged.config = dict(parts[0].config)
    merged.warnings += flags
    merged.health["shards"] = per_shard
    merged.health["flagged"] = bool(flags)
    first = shards[0].meta
    info: ShardsInfo = {
        "run_id": first["run_id"],
        "scenario_hash": first["scenario_hash"],
        "count": first["count"],
        "start_at": first.get("start_at"),
        "late_limit_s": late_limit_s,
        "achieved_rate_sum": sum(float(p["request_throughput"]) for p in per_shard),
        "flagged": bool(flags),
        "flags": flags,
        "shards": per_shard,
    }
    return merged, info


def run(args: argparse.Namespace) -> int:
    from hpload.loadgen.result import format_table
    from hpload.scenarios.results import ResultStore, write_json_atomic

    roots = [Path(d) for d in args.dirs]
    shards = [Shard(r) for r in roots]
    check(shards)
    merged, info = merge_shards(shards, args.late_limit_s)
    first = min(shards, key=lambda s: s.index)
    out = ResultStore(args.results)
    out.prepare(first.store.scenario_dump())
    statuses = {s.record.status for s in shards}
    record = replace(
        first.record,
        status="ok" if statuses == {"ok"} else "failed",
        error=next((f"shard {s.name}: {s.record.error}" for s in shards if not s.record.ok), None),
        summary=as_summary({k: v for k, v in merged.summary.items() if isinstance(v, int | float | str | None)}),
        warnings=[*merged.warnings, *merged.health.get("warnings", [])],
        path=None,
    )
    point_id = record.point_id
    _join_requests([s.store.points_dir for s in shards], out.requests_path(point_id))
    out.save(record, merged)
    write_json_atomic(out.root / "shards.json", info)
    print(format_table(merged))
    print(f"\nmerged {len(shards)} shards of run {info['run_id']}: summed shard rates "
          f"{info['achieved_rate_sum']:.2f} req/s -> {out.root}/")
    for s in info["shards"]:
        h = s["health"]
        late = s["start_late_s"]
        print(f"  shard {s['index']}/{info['count']} {s['host']}: {s['completed']} req, "
              f"{s['request_throughput']:.2f} req/s, cpu {h.get('cpu_percent', 0.0):.0f}%, "
              f"late {'-' if late is None else f'{late:.3f} s'}{'  BOTTLENECK' if h.get('bottleneck') else ''}")
    return 0


def _join_requests(points_dirs: list[Path], out_path: Path) -> None:
    """Every shard's per-request lines (one file per shard, or per worker of a shard) in one file."""
    files = [f for d in points_dirs for f in sorted(d.glob("*.requests*.jsonl"))]
    if not files:
        return
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    with open(tmp, "wb") as dst:
        for f in files:
            with open(f, "rb") as src:
                shutil.copyfileobj(src, dst)
    tmp.replace(out_path)
