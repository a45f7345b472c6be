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
    from hpload.scenarios.compare import columns_from, compare_table

    columns = [c for path in args.results for c in columns_from(path)]
    print(compare_table(columns, markdown=args.markdown))
    return 0
