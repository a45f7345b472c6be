"""Process groups: a child's whole tree is stopped, even members that ignore SIGTERM, and logs go to a file."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil
from helpers import wait_s

from hpload import procs

# A parent that starts a grandchild ignoring SIGTERM, prints both pids, then sleeps.
_TREE = r"""
import os, signal, subprocess, sys, time
kid = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
print("pids", os.getpid(), kid.pid, flush=True)
time.sleep(600)
"""


def _wait_for_pids(log: Path) -> list[int]:
    deadline = time.monotonic() + wait_s(30)
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if line.startswith("pids "):
                return [int(x) for x in line.split()[1:]]
        time.sleep(0.05)
    raise AssertionError(f"child never printed its pids; log: {log.read_text()!r}")


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_terminate_kills_the_whole_group_including_sigterm_ignorers(tmp_path: Path) -> None:
    log = tmp_path / "tree.log"
    child = procs.spawn([sys.executable, "-c", _TREE], log_path=log)
    parent_pid, kid_pid = _wait_for_pids(log)
    assert parent_pid == child.pid
    assert set(child.pids()) >= {parent_pid, kid_pid}
    assert child in procs.live_children()
    started = time.monotonic()
    child.terminate(grace_s=1.0)
    assert time.monotonic() - started < 10
    assert _gone(parent_pid) and _gone(kid_pid)
    assert not child.alive() and child.returncode is not None
    assert child not in procs.live_children()


def test_kill_all_stops_every_registered_group(tmp_path: Path) -> None:
    # kill_all stops every group this process registered, and the test session's shared servers are registered
    # here too: so the registry under test lives in a child interpreter of its own.
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from hpload import procs\n"
        f"tree = {_TREE!r}\n"
        "out = Path(sys.argv[1])\n"
        "kids = [procs.spawn([sys.executable, '-c', tree], log_path=out / f't{i}.log') for i in range(2)]\n"
        "import time\n"
        "while not all('pids' in (out / f't{i}.log').read_text() for i in range(2)):\n"
        "    time.sleep(0.05)\n"
        "procs.kill_all(grace_s=0.5)\n"
        "print('left', len(procs.live_children()))\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["left", "0"]
    pids = [pid for i in range(2) for pid in _wait_for_pids(tmp_path / f"t{i}.log")]
    assert len(pids) == 4 and all(_gone(pid) for pid in pids)


def test_output_goes_to_the_log_file_and_tail_reads_it(tmp_path: Path) -> None:
    log = tmp_path / "out.log"
    child = procs.spawn([sys.executable, "-c", "import sys\nfor i in range(100): print('line', i)\n"
                         "print('oops', file=sys.stderr)"], log_path=log)
    child.popen.wait(timeout=30)
    tail = child.log_tail(3).splitlines()
    assert tail == ["line 98", "line 99", "oops"]
    assert child.returncode == 0
