"""``hpload tune SCENARIO``: SLO-constrained tuning of server and load settings (Optuna ask/tell).

``--replay`` tunes against a recorded landscape instead of live servers (the research's A100 measurements, or a
sweep recorded by ``hpload run``), so samplers can be compared in seconds.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scenario", nargs="?", help="a scenario file with a [tune] table, or a shipped name (slo-tune)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                        help="override any scenario field, e.g. --set tune.n_trials=30")
    parser.add_argument("--results", metavar="DIR", help="results directory (default: results/<scenario name>)")
    parser.add_argument("--storage", metavar="URL",
                        help="Optuna storage shared by several machines, e.g. postgresql://user@host/db "
                        "(default: SQLite in the results directory, so a rerun resumes)")
    parser.add_argument("--study", metavar="NAME", help="study name (default: <scenario>-<server label>)")
    parser.add_argument("--n-trials", type=int, metavar="N", help="measured points per study")
    parser.add_argument("--sampler", choices=("tpe", "gp", "random", "grid"), help="default: the scenario's (tpe)")
    replay = parser.add_argument_group("replay a recorded landscape instead of live servers")
    replay.add_argument("--replay", metavar="DIR",
                        help="a results directory of a sweep, or an infpop-style directory of <engine>_gpusN.csv")
    replay.add_argument("--engine", default="vLLM", help="infpop engine: vLLM or autohf (default vLLM)")
    replay.add_argument("--model", dest="replay_model", metavar="NAME", help="infpop model row, e.g. Phi-2")
    replay.add_argument("--seed", type=int, default=0, help="sampler seed for --replay")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


class ConsoleTune:
    """Progress for live tuning: the run console plus one line per trial."""

    def __init__(self, quiet: bool) -> None:
        from hpload.scenarios.console import ConsoleProgress

        self.progress = ConsoleProgress(quiet=quiet)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.progress, name)

    def __call__(self, snap: Any) -> None:
        self.progress(snap)

    def trial_finished(self, label: str, number: int, total: int, params: dict[str, Any], outcome: Any,
                       reused: bool) -> None:
        settings = " ".join(f"{k.split('.', 1)[-1]}={v}" for k, v in params.items())
        if outcome.failed:
            verdict = f"FAILED ({outcome.error})"
        else:
            broken = [k for k, v in outcome.constraints.items() if v > 0]
            verdict = f"{outcome.value:.1f}" + (f" (breaks {', '.join(broken)})" if broken else " (meets SLO)")
        note = " [known point, not re-measured]" if reused else ""
        sys.stderr.write(f"trial {number}/{total} {label} {settings}: {verdict}{note}\n")

    def capacity_trial(self, label: str, number: int, total: int, row: dict[str, Any], state: dict[str, Any]) -> None:
        from hpload.scenarios.capacity_tune import trial_line

        sys.stderr.write(trial_line(label, number, total, row, state) + "\n")


def run(args: argparse.Namespace) -> int:
    import asyncio
    from pathlib import Path

    from hpload.errors import HploadError
    from hpload.scenarios.loader import ScenarioError, load_scenario
    from hpload.scenarios.runner import default_results_dir
    from hpload.scenarios.tune_runner import tune_scenario

    if args.replay:
        return _replay(args)
    if not args.scenario:
        raise HploadError("no scenario; fix: give one (e.g. 'hpload tune slo-tune') or --replay DIR")
    overrides = list(args.overrides)
    for flag, path in (("storage", "tune.storage"), ("study", "tune.study_name"), ("n_trials", "tune.n_trials"),
                       ("sampler", "tune.sampler")):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{path}={value}" if flag == "n_trials" else f'{path}="{value}"')
    try:
        scenario = load_scenario(args.scenario, overrides).scenario
    except ScenarioError as err:
        for problem in err.problems:
            sys.stderr.write(f"hpload tune: error: {problem}\n")
        return err.exit_code
    if scenario.tune is None:
        raise HploadError(f"scenario {scenario.name}: no [tune] table; fix: add one, or use 'hpload run' for sweeps")
    from hpload.scenarios.runner import scenario_caveats

    for line in scenario_caveats(scenario):
        sys.stderr.write(f"hpload tune: warning: {line}\n")
    results_dir = Path(args.results) if args.results else default_results_dir(scenario)
    console = ConsoleTune(args.quiet)
    print(f"hpload tune: {scenario.name} ({scenario.tune.sampler}, objective {scenario.tune.objective}) -> "
          f"{results_dir}", file=sys.stderr, flush=True)
    reports = asyncio.run(tune_scenario(scenario, results_dir=results_dir, listener=console, observer=console))
    print()
    for report in reports:
        print(f"== {report.label}: study {report.study_name} ({report.measured} measured, {report.reused} known) ==")
        if report.best is None:
            print("  no feasible point yet: every trial broke an SLO or failed")
            continue
        params, value = report.best
        print(f"  best feasible {scenario.tune.objective}: {value:.2f}")
        for key, v in params.items():
            print(f"    {key} = {v}")
        if report.gain_over_default is not None:
            print(f"  vs the defaults ({report.default_value:.2f}): {report.gain_over_default:+.1%}")
    if scenario.tune.objective == "capacity":
        from hpload.scenarios.capacity_tune import load_studies

        for study in load_studies(results_dir):
            print(f"  {study['label']}: {len(study['trials'])} trials, {study.get('restarts', 0)} restarts spent")
    print(f"\nresults: {results_dir}/   study: {reports[0].storage if reports else '-'}")
    print(f"next: hpload report {results_dir}")
    return 0


def _replay(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hpload.errors import HploadError
    from hpload.scenarios.landscape import landscape_from_results, load_infpop, replay_study, trials_to_reach

    source = Path(args.replay)
    if (source / "points").is_dir():
        landscape = landscape_from_results(source)
    else:
        landscapes = load_infpop(source, args.engine)
        if not args.replay_model:
            raise HploadError(f"--model: which model row? fix: one of {', '.join(landscapes)}")
        if args.replay_model not in landscapes:
            raise HploadError(f"--model {args.replay_model}: not in {source}; fix: one of {', '.join(landscapes)}")
        landscape = landscapes[args.replay_model]
    best = landscape.best()
    if best is None:
        raise HploadError(f"--replay {source}: no feasible point in the landscape")
    sampler = args.sampler or "tpe"
    budget = args.n_trials or landscape.size
    measured = replay_study(landscape, sampler=sampler, seed=args.seed, max_measurements=budget)
    reached = trials_to_reach(measured, 0.98 * best, landscape.size)
    found = max((v for v in measured if v is not None), default=None)
    print(f"replay {landscape.name}: grid {landscape.size} points, best {best:.2f}")
    print(f"{sampler} (seed {args.seed}): best found {found if found is None else round(found, 2)} in {len(measured)} "
          f"measurements; reached 98% of the best after {reached} ({reached / landscape.size:.0%} of the grid)")
    return 0
