"""``hpload tui [SCENARIO]``: argparse only here, so ``hpload tui --help`` never imports Textual."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "scenario",
        nargs="?",
        help="a scenario name (from the shipped ones) or a .toml path; default: the quickstart against echo",
    )
    parser.add_argument("--start", action="store_true", help="skip the setup screen and start the run at once")
    parser.add_argument("--light", action="store_true", help="start with the light theme (t toggles it)")
    parser.add_argument(
        "--results", type=Path, default=None, help="results root; each start writes RESULTS/<scenario>/tui-<time>"
    )
    parser.add_argument(
        "--run-in",
        choices=("process", "thread"),
        default="process",
        help="where the load generator runs: a child process (default; the UI never slows it) or a thread",
    )
    # The old spelling, kept so scripts keep working; "engine" now means only a server's inference engine.
    parser.add_argument("--engine", dest="run_in", choices=("process", "thread"), action=_DeprecatedAlias,
                        help=argparse.SUPPRESS)


class _DeprecatedAlias(argparse.Action):
    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        sys.stderr.write(f"hpload tui: warning: {option_string} is deprecated; use --run-in\n")
        setattr(namespace, self.dest, values)


def run(args: argparse.Namespace) -> int:
    from hpload.tui.plans import QUICKSTART, ScenarioChoice, load_plan, scenario_choices

    choices = scenario_choices()
    initial = QUICKSTART
    if args.scenario:
        path = Path(args.scenario)
        if path.suffix == ".toml" or path.exists():
            if not path.is_file():
                from hpload.errors import HploadError

                raise HploadError(f"scenario {args.scenario}: no such file; fix: give an existing .toml path")
            choice = ScenarioChoice(path.stem, path)
            choices = [c for c in choices if c.name != choice.name] + [choice]
            initial = choice.name
        else:
            initial = args.scenario.removesuffix(".toml")
    chosen = next((c for c in choices if c.name == initial), None)
    if chosen is None:
        from hpload.errors import HploadError

        names = ", ".join(c.name for c in choices)
        raise HploadError(f"scenario {args.scenario}: not found; fix: give a .toml path or one of {names}")
    # Load before the screen takes over the terminal, so a broken file reports as one line on the console.
    plan = load_plan(chosen)

    from hpload.tui.app import DARK, LIGHT, HploadApp

    app = HploadApp(
        choices,
        initial=initial,
        start_plan=plan if args.start else None,
        theme=LIGHT if args.light else DARK,
        results_root=args.results,
        run_in=args.run_in,
    )
    code = app.run()
    return int(code or 0)
