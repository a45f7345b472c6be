"""``hpload capacity [SCENARIO]``: the highest offered request rate each server of a scenario sustains within its
SLO (docs/capacity.md). With no argument it runs the shipped ``capacity`` scenario (the calibrated echo server)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

_SPEC_FLAGS = ("probe_s", "warmup_s", "precision", "start_rate", "max_rate", "min_rate", "replicates")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scenario", nargs="?", help="a scenario file or shipped name (default: capacity)")
    parser.add_argument("--slo", action="append", default=[], metavar="KEY=VALUE",
                        help="override an [slo] limit, e.g. --slo ttft_p99_ms=500 --slo tpot_p99_ms=50")  # fmt: skip
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                        help="override any scenario field, e.g. --set capacity.probe_s=30")  # fmt: skip
    parser.add_argument("--results", metavar="DIR", help="results directory (default: results/<scenario name>)")
    parser.add_argument("--server", action="append", default=[], metavar="KIND|URL",
                        help="search these servers instead of the scenario's: vllm, hf, echo or a URL")  # fmt: skip
    parser.add_argument("--model", metavar="DIR", help="model directory for vllm/hf servers")
    group = parser.add_argument_group("search (override the scenario's [capacity])")
    for name in _SPEC_FLAGS:
        group.add_argument(f"--{name.replace('_', '-')}", type=int if name == "replicates" else float, default=None)
    group.add_argument("--min-capacity", type=float, metavar="REQ_S",
                       help="fail (threshold exit code 99) when a server's capacity is below this")  # fmt: skip
    parser.add_argument("--quiet", action="store_true", help="no probe lines, only the summary")
    parser.add_argument("--tui", action="store_true", help="show the probes and the latency curve as they come")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hpload.scenarios.cli_run import server_table
    from hpload.scenarios.loader import ScenarioError, load_scenario

    def edit(data: dict[str, Any]) -> None:
        if args.server:
            base = list(data.get("servers") or [])
            data["servers"] = [server_table(s, base, args.model) for s in args.server]
        table = data.setdefault("capacity", {})
        for name in _SPEC_FLAGS:
            if getattr(args, name) is not None:
                table[name] = getattr(args, name)
        if args.min_capacity is not None:
            table["capacity_threshold"] = args.min_capacity

    try:
        loaded = load_scenario(args.scenario or "capacity", args.overrides, edit)
    except ScenarioError as err:
        for problem in err.problems:
            sys.stderr.write(f"hpload capacity: error: {problem}\n")
        return err.exit_code
    return run_loaded(loaded.scenario, Path(args.results) if args.results else None, args.slo, quiet=args.quiet,
                      tui=args.tui)  # fmt: skip


def run_loaded(scenario: Any, results: Any, slo_flags: list[str], *, quiet: bool = False, tui: bool = False) -> int:
    """Search every server of a validated scenario, print the table, apply the capacity threshold."""
    import asyncio
    from pathlib import Path

    from hpload.scenarios.runner import default_results_dir

    results_dir = results or default_results_dir(scenario)
    print(f"hpload capacity: {scenario.name} -> {results_dir}", file=sys.stderr, flush=True)
    if tui:
        from hpload.scenarios.capacity import check_slo, parse_slo_overrides
        from hpload.tui.capacity import run_tui

        check_slo(parse_slo_overrides(scenario.slo, slo_flags))  # a bad SLO is a console line, not a screen
        records = run_tui(scenario, Path(results_dir), slo_flags)
    else:
        records = asyncio.run(run_capacity(scenario, results_dir, slo_flags, quiet=quiet))
    print()
    print(capacity_table(records))
    print(f"\nresults: {results_dir}/capacity/    next: hpload report {results_dir}")
    return check_threshold(scenario, records)


async def run_capacity(scenario: Any, results_dir: Any, slo_flags: list[str] | None = None, *,
                       quiet: bool = False, on_probe: Any = None, observer: Any = None,
                       stop: Any = None) -> list[dict[str, Any]]:  # fmt: skip
    """Every server's capacity record, in the scenario's order; probes on disk as they finish."""
    from hpload.scenarios.capacity import CapacitySpec, check_slo, parse_slo_overrides
    from hpload.scenarios.capacity_run import SearchSettings, find_capacity
    from hpload.scenarios.results import ResultStore
    from hpload.scenarios.runner import ServerKeeper

    slo = parse_slo_overrides(scenario.slo, slo_flags or [])
    check_slo(slo)
    spec = scenario.capacity or CapacitySpec()
    store = ResultStore(results_dir)
    store.prepare(scenario.model_dump(mode="json", exclude={"servers": {"__all__": {"api_key"}}}))

    def show(label: str, probe: Any) -> None:
        if on_probe is not None:
            on_probe(label, probe)
        if quiet:
            return
        verdict = "pass" if probe.passed else "FAIL"
        why = f"  ({probe.violations[0]})" if probe.violations else ""
        p99 = probe.stats.get("p99_ttft_ms")
        print(f"  {label}: {probe.kind:<5} {probe.rate:>8.4g} req/s  {verdict}  p99 ttft "
              f"{'-' if p99 is None else f'{p99:.0f}'} ms  {probe.seconds:5.1f} s{why}"[:200],
              file=sys.stderr, flush=True)  # fmt: skip

    records = []
    keeper = ServerKeeper(workdir=store.root / "logs")
    try:
        for server in scenario.servers:
            settings = SearchSettings(workload=scenario.workload, slo=slo, spec=spec, base_load=scenario.load,
                                      seed=scenario.seed, on_failure=scenario.on_failure, on_probe=show,
                                      observer=observer, stop=stop)  # fmt: skip
            records.append(await find_capacity(server, settings, store, keeper))
            await keeper.close()  # one server at a time: the next one gets the machine to itself
    finally:
        await keeper.close()
    return records


def capacity_table(records: list[dict[str, Any]]) -> str:
    head = f"{'server':<20} {'capacity req/s':>14} {'out tok/s':>10} {'interval':>18} {'p99 ttft':>9} " \
           f"{'p99 tpot':>9} {'probes':>6} {'probe-s':>8}"  # fmt: skip
    lines = [head, "-" * len(head)]
    for r in records:
        lo, hi = r["interval"]["lo"], r["interval"]["hi"]
        lat = r["latency_at_capacity"]
        interval = f"[{'-' if lo is None else f'{lo:.4g}'}, {'-' if hi is None else f'{hi:.4g}'})"
        lines.append(
            f"{r['label'][:20]:<20} {r['capacity_rps']:>14.4g} {r['output_tok_s'] or 0:>10.1f} {interval:>18} "
            f"{_ms(lat.get('p99_ttft_ms')):>9} {_ms(lat.get('p99_tpot_ms')):>9} {len(r['probes']):>6} "
            f"{r['probe_seconds']:>8.1f}"
        )
        lines.append(f"{'':<20} {r['reason']}")
    return "\n".join(lines)


def _ms(v: Any) -> str:
    return "-" if v is None else f"{float(v):.1f}"


def check_threshold(scenario: Any, records: list[dict[str, Any]]) -> int:
    from hpload.errors import ThresholdFailed

    limit = scenario.capacity.capacity_threshold if scenario.capacity is not None else None
    low = [r for r in records if limit is not None and r["capacity_rps"] < limit]
    if low:
        r = low[0]
        raise ThresholdFailed(f"capacity of {r['label']} is {r['capacity_rps']:.4g} req/s, below capacity_threshold "
                              f"{limit:g} ({r['reason']}); fix: see the probes above, or lower the threshold")
    return 0
