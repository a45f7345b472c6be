"""Where a Python process spends its CPU, from a py-spy raw (collapsed) profile: per thread, the share of samples,
and the functions with the most samples on top of the stack (self) and anywhere in it (inclusive).

    py-spy record -d 8 -r 50 --nonblocking --threads --format raw -o prof.txt --pid PID
    python3 pyspy_top.py prof.txt [--top 15] [--full 400]     (--full: the samples of a thread busy all along, -d x -r)

py-spy leaves idle threads out by default, so the samples are the time a thread was running (or runnable); the
shares are of all samples in the file.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<where>[^()]*)\)$")


def short(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    where = m["where"]
    path, _, line = where.rpartition(":")
    parts = path.split("/")
    return f"{m['func']} ({'/'.join(parts[-2:])}:{line})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("profile", type=Path)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument(
        "--full",
        type=float,
        help="samples a thread busy all along gets (-d x -r): thread shares as percent of one core",
    )
    args = ap.parse_args()
    threads: Counter[str] = Counter()
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in args.profile.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        thread = frames[0] if frames[0].startswith("thread") else "?"
        calls = [short(f) for f in frames if not f.startswith(("thread", "process"))]
        total += n
        threads[thread] += n
        if calls:
            own[calls[-1]] += n
        for f in set(calls):
            incl[f] += n
    if not total:
        print(f"{args.profile}: no samples")
        return
    print(f"{args.profile.name}: {total} samples")
    print(
        "  threads (share of samples): " + ", ".join(f"{t} {100 * n / total:.0f}%" for t, n in threads.most_common(6))
    )
    if args.full:
        busy = ", ".join(f"{t} {100 * n / args.full:.0f}%" for t, n in threads.most_common(6))
        print(f"  threads (busy, % of one core): {busy}")
    print("  self:")
    for f, n in own.most_common(args.top):
        print(f"    {100 * n / total:5.1f}%  {f}")
    print("  inclusive:")
    for f, n in incl.most_common(args.top):
        print(f"    {100 * n / total:5.1f}%  {f}")


if __name__ == "__main__":
    main()
