"""The ``hpload`` command.

Each subcommand lives in the module that owns its work and is imported only when that subcommand runs, so
``hpload --help`` never touches torch, transformers, vllm, Textual or matplotlib. A command module provides
``configure(parser)`` (argparse only, no heavy imports) and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
from collections.abc import Sequence
from typing import NoReturn

from hpload import __version__
from hpload.errors import HploadError, one_line

# name -> (module, one-line summary)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("hpload.scenarios.cli_run", "run a scenario file headless (or drive one server from flags alone)"),
    "tui": ("hpload.tui.cli", "live latency histograms, throughput and GPU telemetry in the terminal"),
    "serve": ("hpload.servers.cli", "start a server: vLLM, HF's transformers serve, hpload's transformers wrapper (hf), or the echo calibrator"),
    "tune": ("hpload.scenarios.cli_tune", "SLO-constrained tuning of server and load settings with Optuna"),
    "capacity": ("hpload.scenarios.cli_capacity", "the highest request rate each server sustains within an SLO"),
    "merge": ("hpload.scenarios.cli_merge", "join the shards of one load run on several hosts into one result"),
    "compare": ("hpload.scenarios.cli_compare", "put result files side by side with deltas"),
    "report": ("hpload.scenarios.cli_report", "write a Markdown report with plots from a results directory"),
    "model": ("hpload.modelcli", "make a local model: a tiny random Llama, or a real architecture's shape"),
    "doctor": ("hpload.doctor", "check (and with --fix, repair) the environment hpload runs in"),
}


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad input as one line (exit 2) instead of usage plus error."""

    def error(self, message: str) -> NoReturn:
        hint = f" (see '{self.prog} --help')"
        sys.stderr.write(f"{self.prog}: error: {one_line(message)}{hint}\n")
        raise SystemExit(2)


def _top_parser() -> _Parser:
    epilog = "commands:\n" + "\n".join(f"  {name:<9} {summary}" for name, (_, summary) in COMMANDS.items())
    parser = _Parser(
        prog="hpload",
        description="Load-test and tune LLM inference servers; numbers you can trust.",
        epilog=epilog + "\n\nRun 'hpload COMMAND --help' for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="hpload [-h] [--version] COMMAND ...",
    )
    parser.add_argument("--version", action="version", version=f"hpload {__version__}")
    parser.add_argument("command", nargs="?", metavar="COMMAND", help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser()
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0
    if argv[0] == "--version":
        top.parse_args(["--version"])
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        top.error(f"unknown command '{name}'; choose from {', '.join(COMMANDS)}")
    module_name, summary = COMMANDS[name]
    module = importlib.import_module(module_name)
    sub = _Parser(prog=f"hpload {name}", description=summary)
    module.configure(sub)
    args = sub.parse_args(rest)
    # SIGTERM takes the same orderly path as Ctrl-C: servers are stopped and finished results stay on disk.
    signal.signal(signal.SIGTERM, _as_ctrl_c)
    try:
        return int(module.run(args) or 0)
    except HploadError as err:
        sys.stderr.write(f"hpload {name}: error: {one_line(str(err))}\n")
        return err.exit_code
    except ModuleNotFoundError as err:
        # A heavy optional dependency (torch, transformers, vllm) missing: say which extra brings it.
        sys.stderr.write(
            f"hpload {name}: error: Python package '{err.name}' is not installed; fix: pip install 'hpload[cpu]'"
            " (CPU machines) or 'hpload[cuda]' (GPU machines)\n"
        )
        return 2
    except BrokenPipeError:
        # The reader went away (`hpload ... | head`): not an error worth a traceback.
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        sys.stderr.write(f"hpload {name}: interrupted; finished results are on disk\n")
        return 130


def _as_ctrl_c(signum: int, frame: object) -> None:
    # Exactly Ctrl-C's path: inside asyncio.run that is the runner's SIGINT handler, which cancels the main task so
    # every `finally` runs in order. A KeyboardInterrupt raised here instead lands on whatever line is running; inside
    # an anyio task group (httpx connecting) it came out wrapped in an exception group, printed as a traceback at
    # asyncio.run's shutdown (seen with one core busy). Where SIGINT is ignored (a background job of a
    # non-interactive shell), raising SIGINT would do nothing: SIGTERM then interrupts as before.
    if signal.getsignal(signal.SIGINT) in (signal.SIG_IGN, signal.SIG_DFL, None):
        raise KeyboardInterrupt
    signal.raise_signal(signal.SIGINT)


if __name__ == "__main__":
    raise SystemExit(main())
