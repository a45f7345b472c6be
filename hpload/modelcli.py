"""``hpload model``: make local models (no hub needed)."""

from __future__ import annotations

import argparse
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="what", required=True, metavar="{tiny,like}")
    tiny = sub.add_parser("tiny", help="a tiny random-weight Llama that vLLM (CPU) and transformers both load")
    tiny.add_argument("dir", type=Path, nargs="?", help="output directory (default: the cached embedded model)")
    tiny.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")
    like = sub.add_parser(
        "like", help="config.json + tokenizer of a real architecture, for --load-format dummy / from_config runs"
    )
    like.add_argument("preset", nargs="?", help="preset name (see --list)")
    like.add_argument("dir", type=Path, nargs="?", help="output directory")
    like.add_argument("--list", action="store_true", help="list the presets and exit")
    # The parent parser reports bad input on one line; subparsers must too.
    for p in (tiny, like):
        p.error = parser.error  # type: ignore[method-assign]


def run(args: argparse.Namespace) -> int:
    from hpload import model
    from hpload.errors import HploadError

    if args.what == "tiny":
        out = model.build_tiny(args.dir, seed=args.seed) if args.dir else model.ensure_tiny_model()
        print(out)
        return 0
    if args.list:
        for name, spec in model.list_presets().items():
            print(f"{name:<12} {spec.get('description', '')}")
        return 0
    if not args.preset or not args.dir:
        raise HploadError("model like: give PRESET and DIR (e.g. 'hpload model like llama-1b ./llama-1b'); see --list")
    print(model.build_like(args.preset, args.dir))
    return 0
