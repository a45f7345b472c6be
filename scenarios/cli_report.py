"""``hpload report RESULTS``: Markdown plus PNG plots (landscape heatmap, latency CDFs, Pareto front)."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", metavar="RESULTS", help="a results directory written by 'hpload run' or 'hpload tune'")
    parser.add_argument(
        "--latency",
        default="p99_ttft_ms",
        metavar="METRIC",
        help="the latency of the Pareto plot (default p99_ttft_ms; e.g. p99_e2el_ms, p99_tpot_ms)",
    )


def run(args: argparse.Namespace) -> int:
    from hpload.scenarios.report import write_report

    files = write_report(args.results, latency_key=args.latency)
    print(f"report: {files.markdown}")
    for path in files.plots:
        print(f"plot:   {path}")
    for note in files.notes:
        print(f"note:   {note}")
    return 0
