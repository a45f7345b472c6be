"""``hpload run [SCENARIO]``: measure a scenario headless. With no argument it runs the shipped quickstart (vLLM vs
the transformers wrapper on the embedded tiny model); with flags alone (``--server echo --concurrency 4``) it runs
the quickstart's workload against the servers and load the flags give."""

from __future__ import annotations

import argparse
import sys
from typing import Any

_LOAD_FLAGS = {
    "concurrency": "load.concurrency",
    "rate": "load.rate",
    "num_requests": "load.num_requests",
    "duration_s": "load.duration_s",
    "warmup_requests": "load.warmup_requests",
    "workers": "load.workers",
    "max_tokens": "workload.max_tokens",
    "input_len": "workload.input_len",
}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "scenario",
        nargs="?",
        help="a scenario file, or the name of a shipped one (quickstart, landscape, online, slo-tune); "
        "default: quickstart",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override any scenario field, e.g. --set load.concurrency=16 --set servers.vllm.max_num_seqs=64",
    )
    parser.add_argument("--results", metavar="DIR", help="results directory (default: results/<scenario name>)")
    parser.add_argument(
        "--server",
        action="append",
        default=[],
        metavar="KIND|URL",
        help="run against these servers instead of the scenario's: a kind of `hpload serve` (vllm, hf, echo, ...), or "
        "the URL of a running OpenAI-compatible server (repeat for several)",
    )
    parser.add_argument("--model", metavar="DIR",
                        help="model directory for the servers that load one (default: the tiny model)")
    load = parser.add_argument_group("load (override the scenario's [load] and [workload])")
    load.add_argument("--concurrency", type=int, metavar="N", help="closed loop: requests in flight")
    load.add_argument("--rate", type=float, metavar="REQ_S", help="open loop: requests per second (Poisson)")
    load.add_argument("--num-requests", type=int, metavar="N", help="requests in the measured phase")
    load.add_argument("--duration-s", type=float, metavar="S", help="length of the measured phase")
    load.add_argument("--warmup-requests", type=int, metavar="N", help="requests excluded from statistics")
    load.add_argument("--workers", type=int, metavar="N",
                      help="client processes sharing the load (when the client itself is the bottleneck)")
    load.add_argument("--max-tokens", type=int, metavar="N", help="output tokens per request")
    load.add_argument("--input-len", type=int, metavar="N", help="synthetic prompt length in tokens")
    load.add_argument("--trace", metavar="FILE", help="replay a trace at its times (Mooncake/Azure/BurstGPT/hpload "
                      "JSONL, docs/workloads.md); with --rate, warped to that mean rate")  # fmt: skip
    parser.add_argument("--tokenizer", metavar="PATH", help="tokenizer (model dir or tokenizer.json) for a --server URL")
    parser.add_argument("--save-requests", action="store_true",
                        help="also keep one JSON line per request (points/<point>.requests.jsonl)")
    parser.add_argument("--rerun", action="store_true", help="measure every point again, even finished ones")
    parser.add_argument("--quiet", action="store_true", help="no progress lines, only the summary")
    shard = parser.add_argument_group("one load across hosts (docs/shards.md; join the results with 'hpload merge')")
    shard.add_argument("--shard", metavar="I/N|auto",
                       help="send host I's share (of N, from 0) of the scenario's one fixed load; auto: I from "
                       "JOB_COMPLETION_INDEX (Kubernetes Indexed Job), N from --shards")
    shard.add_argument("--shards", type=int, metavar="N", help="shard count, with --shard auto")
    shard.add_argument("--start-at", metavar="TIME",
                       help="when every shard starts: Unix seconds, ISO 8601, file:PATH or an http(s) URL (a barrier: "
                       "wait until it holds one)")
    shard.add_argument("--run-id", metavar="ID", help="one name for the shards of one run (default: from the "
                       "scenario's hash and --start-at); request ids are ID-<index>")


def server_table(spec: str, base: list[dict[str, Any]], model: str | None, tokenizer: str | None = None) -> dict[str, Any]:
    """A ``--server`` value as a [[servers]] table; kinds the scenario already has keep its settings."""
    from hpload.errors import HploadError

    if spec.startswith(("http://", "https://")):
        return {"kind": "external", "label": "external", "url": spec.rstrip("/"), "tokenizer": tokenizer}
    from hpload.servers.kinds import KINDS

    launchable = [name for name, kind in KINDS.items() if kind.cli]
    if spec not in launchable:
        raise HploadError(f"--server {spec}: not a server kind or URL; fix: use {', '.join(launchable)} or "
                          "http://HOST:PORT")
    table = next((dict(t) for t in base if t.get("kind") == spec), {"kind": spec, "label": spec})
    if model and KINDS[spec].local_model:
        table["model"] = model
    return table


def flag_edits(args: argparse.Namespace) -> Any:
    """The flags as an edit of the scenario's tables, applied before ``--set`` and before validation."""

    from hpload.servers.kinds import KINDS

    local_model_kinds = [name for name, kind in KINDS.items() if kind.local_model]

    def edit(data: dict[str, Any]) -> None:
        if args.server:
            base = list(data.get("servers") or [])
            data["servers"] = [server_table(s, base, args.model, getattr(args, "tokenizer", None)) for s in args.server]
        elif args.model:
            for table in data.get("servers") or []:
                if table.get("kind") in local_model_kinds:
                    table["model"] = args.model
        for flag, path in _LOAD_FLAGS.items():
            value = getattr(args, flag)
            if value is None:
                continue
            table, _, name = path.partition(".")
            section = data.setdefault(table, {})
            section[name] = value
            # One loop kind at a time: a rate flag replaces the scenario's concurrency and the other way round.
            if name == "rate":
                section.pop("concurrency", None)
                section.pop("steps", None)
            elif name == "concurrency":
                section.pop("rate", None)
                section.pop("steps", None)
            elif name == "num_requests" and args.duration_s is None:
                section.pop("duration_s", None)
            elif name == "duration_s" and args.num_requests is None:
                section.pop("num_requests", None)
        if getattr(args, "trace", None):
            data.setdefault("workload", {}).update(source="trace", path=args.trace)
            section = data.setdefault("load", {})
            section["replay"] = True
            # The trace bounds the run; a base scenario's warm-up seconds would swallow its first rows.
            dropped = ("concurrency", "steps", "warmup_s") + (() if args.duration_s is not None else ("duration_s",))
            for name in dropped + (() if args.rate is not None else ("rate",)):
                section.pop(name, None)
        if getattr(args, "save_requests", False):
            data["save_requests"] = True
        if args.server and args.scenario is None:
            data["name"] = "adhoc"
            data.pop("thresholds", None)

    return edit


def summary_table(records: list[Any]) -> str:
    """Side by side with deltas for a few points, one compact row per point for a sweep."""
    from hpload.scenarios.compare import Column, compare_table

    ok = [r for r in records if r.ok]
    if 1 <= len(ok) <= 4:
        return compare_table([Column(_column_name(r), r.summary) for r in ok])
    head = f"{'point':<44} {'out tok/s':>10} {'req/s':>7} {'p99 ttft ms':>12} {'p99 tpot ms':>12} {'goodput':>8}"
    lines = [head, "-" * len(head)]
    for r in records:
        s = r.summary
        if not r.ok:
            lines.append(f"{_column_name(r)[:44]:<44} FAILED: {r.error}"[:160])
            continue
        goodput = s.get("request_goodput")
        lines.append(
            f"{_column_name(r)[:44]:<44} {float(s.get('output_throughput') or 0):>10.1f} "
            f"{float(s.get('request_throughput') or 0):>7.2f} {float(s.get('p99_ttft_ms') or 0):>12.1f} "
            f"{float(s.get('p99_tpot_ms') or 0):>12.2f} {'-' if goodput is None else f'{float(goodput):.2f}':>8}"
        )
    return "\n".join(lines)


def _column_name(record: Any) -> str:
    settings = " ".join(f"{k.split('.', 1)[-1]}={v}" for k, v in record.settings.items())
    repeat = f" r{record.repeat}" if record.repeat else ""
    return f"{record.label}{' ' + settings if settings else ''}{repeat}"


def run(args: argparse.Namespace) -> int:
    import asyncio
    from pathlib import Path

    from hpload.errors import HploadError, ThresholdFailed
    from hpload.scenarios.console import ConsoleProgress
    from hpload.scenarios.loader import ScenarioError, load_scenario
    from hpload.scenarios.runner import default_results_dir, run_scenario, scenario_caveats

    try:
        loaded = load_scenario(args.scenario or "quickstart", args.overrides, flag_edits(args))
    except ScenarioError as err:
        for problem in err.problems:
            sys.stderr.write(f"hpload run: error: {problem}\n")
        return err.exit_code
    scenario = loaded.scenario
    if scenario.capacity is not None and scenario.sweep is None and scenario.tune is None:
        from hpload.scenarios.cli_capacity import run_loaded

        return run_loaded(scenario, Path(args.results) if args.results else None, [], quiet=args.quiet)
    if scenario.tune is not None and scenario.sweep is None:
        sys.stderr.write(f"hpload run: note: {scenario.name} has a [tune] table; 'hpload tune' runs the study\n")
    for line in scenario_caveats(scenario):
        sys.stderr.write(f"hpload run: warning: {line}\n")
    results_dir = Path(args.results) if args.results else default_results_dir(scenario)
    progress = ConsoleProgress(quiet=args.quiet)
    if args.shard is not None or args.shards is not None or args.start_at is not None:
        from hpload.scenarios.shards import run_shard_cli

        return run_shard_cli(args, scenario, results_dir, progress)
    where = loaded.path or scenario.name
    print(f"hpload run: {scenario.name} ({where}) -> {results_dir}", file=sys.stderr, flush=True)
    report = asyncio.run(
        run_scenario(scenario, results_dir=results_dir, listener=progress, observer=progress, retry_failed=True)
        if not args.rerun
        else _rerun(scenario, results_dir, progress)
    )
    print()
    print(summary_table(report.records))
    print()
    print(
        f"results: {report.results_dir}/ ({len(report.records)} points: {report.measured} measured, "
        f"{report.skipped} already there, {report.failed} failed)"
    )
    print(f"next: hpload report {report.results_dir}    hpload compare {report.results_dir}")
    if report.threshold_failures:
        for line in report.threshold_failures:
            sys.stderr.write(f"hpload run: threshold broken: {line}\n")
        raise ThresholdFailed(
            f"{len(report.threshold_failures)} threshold(s) broken (first: {report.threshold_failures[0]}); "
            "fix: see the lines above, or relax [thresholds]"
        )
    if report.failed:
        raise HploadError(
            f"{report.failed} point(s) failed (first: {next(r.error for r in report.records if not r.ok)}); "
            f"fix: read the server logs in {report.results_dir}/logs, then rerun to retry them"
        )
    return 0


async def _rerun(scenario: Any, results_dir: Any, progress: Any) -> Any:
    """``--rerun``: forget the finished points of this scenario first (their files are replaced as points end)."""
    from hpload.scenarios.points import expand
    from hpload.scenarios.results import ResultStore
    from hpload.scenarios.runner import run_scenario

    store = ResultStore(results_dir)
    for point in expand(scenario):
        store.record_path(point.point_id).unlink(missing_ok=True)
    return await run_scenario(scenario, results_dir=results_dir, listener=progress, observer=progress)
