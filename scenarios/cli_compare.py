"""``hpload compare RESULT...``: runs or servers side by side, with each metric's change against the first."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "results",
        nargs="+",
        metavar="RESULT",
        help="result files (points/<id>.json), point records (.point.json) or results directories; "
        "the first is the baseline",
    )
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")


def run(args: argparse.Namespace) -> int:
    from hpload.scenarios.capacity_report import compare_capacities
    from hpload.scenarios.compare import columns_from, compare_table

    capacities = compare_capacities(args.results)
    if capacities is not None:
        # Capacity searches: their probes are many points of one server; the capacities are the comparison.
        print(capacities)
        return 0

    columns = [c for path in args.results for c in columns_from(path)]
    print(compare_table(columns, markdown=args.markdown))
    return 0
