"""A SIGKILLed hpload cannot run its clean-up, yet the server it launched must not outlive it (parent-death signal)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import psutil

from hpload.pdeath import die_with_parent


def test_a_sigkilled_hpload_takes_its_echo_server_with_it(tmp_path: object) -> None:
    proc = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "hpload", "serve", "echo", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    server: psutil.Process | None = None
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the ready line: the server answered a real completion
        assert "ready at http://127.0.0.1:" in line, line
        children = psutil.Process(proc.pid).children()
        assert len(children) == 1, children
        server = children[0]
        assert server.is_running() and "hpload.servers.echo" in " ".join(server.cmdline())
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        gone, alive = psutil.wait_procs([server], timeout=15)
        assert not alive, f"echo server {server.pid} outlived the SIGKILLed hpload"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if server is not None and server.is_running():
            os.killpg(server.pid, signal.SIGKILL)


def test_not_armed_off_the_main_thread() -> None:
    import threading

    got: list[object] = []
    t = threading.Thread(target=lambda: got.append(die_with_parent()))
    t.start()
    t.join()
    # The kernel fires on the forking *thread's* exit: armed from a worker thread, it would kill the server early.
    assert got == [None] and die_with_parent() is not None
