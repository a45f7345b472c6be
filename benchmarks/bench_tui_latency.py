"""Key press to screen update in `hpload tui`, idle and while the load generator runs at capacity against echo.

    python benchmarks/bench_tui_latency.py [--presses 60] [--size 100x30] [--concurrency 64]

The real command runs in a pseudo-terminal, exactly as a user starts it. Each press writes a view key (1, 2, 3
in turn) to the terminal and times until the terminal receives the run bar's new "view: <name>" text, which can
only be drawn after the key was handled: that is input parsing, the action, layout, rendering and the write.
Presses are spaced 150-400 ms apart at random so they do not line up with the 0.5 s snapshots.

Three rows, side by side in one run: no load (the run screen after its run was stopped: the floor), and load at capacity with the engine in a child
process (the default) and in a thread of the UI process (``--run-in thread``, the design it replaced). At
capacity means the echo server answers instantly (0 ms TTFT and ITL) at high concurrency, so the client, not the
server, is the limit; the run's own client-health line says so. Goal: median and p99 under 100 ms. On a shared
2-core box the tail is the scheduler's: the UI, the engine and the echo server are three busy processes on two
cores, so read the p99 beside the machine's load average (printed). Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import pty
import random
import re
import select
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path

import psutil

SCENARIO = """
name = "bench-tui"

[[servers]]
kind = "echo"
label = "echo"
ttft_ms = {ttft_ms}
itl_ms = {itl_ms}

[workload]
input_len = 16
num_prompts = 50
max_tokens = 16

[load]
concurrency = {concurrency}
duration_s = 600
"""

VIEWS = ("rates", "log", "latency")
KEYS = {"latency": b"1", "rates": b"2", "log": b"3"}
ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


class Terminal:
    """`hpload tui` on a pseudo-terminal of a fixed size."""

    def __init__(self, argv: list[str], cols: int, rows: int) -> None:
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        env = dict(os.environ, TERM="xterm-256color", COLUMNS=str(cols), LINES=str(rows))
        self.proc = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True, close_fds=True
        )
        os.close(slave)
        self.seen = b""

    def read(self, timeout_s: float) -> bytes:
        ready, _, _ = select.select([self.master], [], [], timeout_s)
        if not ready:
            return b""
        try:
            data = os.read(self.master, 1 << 16)
        except OSError:
            return b""
        self.seen = (self.seen + data)[-200_000:]
        return data

    def wait_for(self, pattern: bytes, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if pattern in ANSI.sub(b"", self.seen):
                return True
            self.read(0.1)
        return False

    def press(self, key: bytes, marker: bytes, timeout_s: float = 5.0) -> float | None:
        """Seconds from writing ``key`` until ``marker`` arrives in the output, or None."""
        while self.read(0.0):  # drain what was already drawn, so only the answer to this key can match
            pass
        tail = b""
        t0 = time.perf_counter()
        os.write(self.master, key)
        deadline = t0 + timeout_s
        while time.perf_counter() < deadline:
            data = self.read(max(deadline - time.perf_counter(), 0.0))
            if not data:
                continue
            # Escape sequences may split the text; keep a tail so a marker across two reads still matches.
            tail = ANSI.sub(b"", tail + data)[-4096:]
            if marker in tail:
                return time.perf_counter() - t0
        return None

    def close(self) -> None:
        if self.proc.poll() is None:
            os.write(self.master, b"q")
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        os.close(self.master)


def measure(label: str, args: argparse.Namespace, workdir: Path, *, load: bool, engine: str) -> dict[str, object]:
    scenario = workdir / f"{label}.toml"
    scenario.write_text(
        SCENARIO.format(ttft_ms=0.0, itl_ms=0.0, concurrency=args.concurrency if load else 1)
    )
    argv = [sys.executable, "-m", "hpload", "tui", str(scenario), "--start", "--results", str(workdir / "results"),
            "--run-in", engine]  # fmt: skip
    term = Terminal(argv, args.cols, args.rows)
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    try:
        if not term.wait_for(b"measure", 90):
            raise RuntimeError(f"{label}: the run never reached its measured phase:\n{term.seen[-2000:]!r}")
        if load:
            time.sleep(3.0)  # let it settle at full speed
        else:
            # The floor: the same screen with the run stopped and the engine process gone.
            os.write(term.master, b"s")
            if not term.wait_for(b"stopped (r restarts)", 60):
                raise RuntimeError(f"{label}: the run did not stop:\n{term.seen[-2000:]!r}")
        times_ms: list[float] = []
        misses = 0
        for i in range(args.presses):
            view = VIEWS[i % len(VIEWS)]
            elapsed = term.press(KEYS[view], f"view: {view}".encode())
            if elapsed is None:
                misses += 1
            else:
                times_ms.append(elapsed * 1000)
            time.sleep(random.uniform(0.15, 0.4))
        health = re.findall(rb"client\s+cpu \d+%\s+loop lag \S+\s+sched lag \S+", ANSI.sub(b"", term.seen))
        warned = b"CLIENT IS THE BOTTLENECK" in ANSI.sub(b"", term.seen)
        rate = re.findall(rb"requests/s (\d[\d,.]*)", ANSI.sub(b"", term.seen))
    finally:
        term.close()
    leftovers = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    times_ms.sort()
    return {
        "label": label,
        "n": len(times_ms),
        "misses": misses,
        "median_ms": statistics.median(times_ms) if times_ms else float("nan"),
        "p99_ms": times_ms[min(len(times_ms) - 1, int(0.99 * len(times_ms)))] if times_ms else float("nan"),
        "max_ms": times_ms[-1] if times_ms else float("nan"),
        "under_100": sum(t < 100 for t in times_ms) / len(times_ms) if times_ms else float("nan"),
        "req_s": rate[-1].decode() if rate else "-",
        "health": health[-1].decode() if health else "-",
        "bottleneck_warning": warned,
        "leftover_processes": len(leftovers),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presses", type=int, default=60)
    parser.add_argument("--size", default="100x30", help="terminal COLSxROWS; under 120 columns views switch")
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    args.cols, args.rows = (int(x) for x in args.size.split("x"))
    random.seed(0)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-tui-") as tmp:
        workdir = Path(tmp)
        rows.append(measure("no load (run stopped)", args, workdir, load=False, engine="process"))
        rows.append(measure("at capacity, engine in a process", args, workdir, load=True, engine="process"))
        rows.append(measure("at capacity, engine in a thread", args, workdir, load=True, engine="thread"))
    print(f"hpload tui key-press-to-screen latency, {args.cols}x{args.rows} pty, {args.presses} presses per row, "
          f"echo 0 ms at concurrency {args.concurrency}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"{'row':<36} {'n':>4} {'miss':>4} {'median ms':>10} {'p99 ms':>8} {'max ms':>8} {'<100ms':>7}  req/s"
          "   leftover  client")
    for r in rows:
        print(f"{r['label']:<36} {r['n']:>4} {r['misses']:>4} {r['median_ms']:>10.1f} {r['p99_ms']:>8.1f} "
              f"{r['max_ms']:>8.1f} {r['under_100']:>7.0%}  {r['req_s']:<7} {r['leftover_processes']:>8}  {r['health']}"
              f"{'  [bottleneck warning shown]' if r['bottleneck_warning'] else ''}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
