"""`hpload serve` stopped by SIGINT or SIGTERM leaves no process behind; the API key guards /v1 and stays secret."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
from helpers import wait_s

from hpload.servers.base import free_port


def _serve(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "hpload", "serve", *args], stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})})


def _wait_ok(url: str, proc: subprocess.Popen[bytes], log: Path, headers: dict[str, str] | None = None) -> None:
    deadline = time.monotonic() + wait_s(180)
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(url, headers=headers, timeout=2, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} never answered; log:\n{log.read_text()[-3000:]}")


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _stop_and_check(proc: subprocess.Popen[bytes], signum: int, tree: list[psutil.Process]) -> None:
    proc.send_signal(signum)
    rc = proc.wait(timeout=60)
    assert rc in (0, 130, -signum, 128 + signum), rc
    _, alive = psutil.wait_procs(tree, timeout=15)
    assert not alive, f"left behind: {[(p.pid, p.name()) for p in alive]}"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_serve_echo_leaves_no_child(signum: int, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    proc = _serve(["echo", "--port", str(port), "--ttft-ms", "1", "--itl-ms", "1"], log)
    _wait_ok(f"http://127.0.0.1:{port}/health", proc, log)
    tree = _descendants(proc.pid)
    assert tree, "hpload serve echo should supervise the echo server as a child process"
    _stop_and_check(proc, signum, tree)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_serve_hf_with_api_key_stops_cleanly(signum: int, tiny_model: Path, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    key = "k-" + os.urandom(6).hex()
    proc = _serve(["hf", "--model", str(tiny_model), "--port", str(port), "--served-model-name", "tiny"], log,
                  env={"HPLOAD_API_KEY": key})
    try:
        _wait_ok(f"http://127.0.0.1:{port}/health", proc, log)
        base = f"http://127.0.0.1:{port}"
        body = {"model": "tiny", "prompt": "x", "max_tokens": 2}
        denied = httpx.post(f"{base}/v1/completions", json=body, timeout=30, trust_env=False)
        assert denied.status_code == 401 and denied.json()["error"]["code"] == "invalid_api_key"
        wrong = httpx.post(f"{base}/v1/completions", json=body, headers={"Authorization": "Bearer nope"}, timeout=30,
                           trust_env=False)
        assert wrong.status_code == 401
        ok = httpx.post(f"{base}/v1/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=60,
                        trust_env=False)
        assert ok.status_code == 200, ok.text
        tree = [psutil.Process(proc.pid), *_descendants(proc.pid)]
        _stop_and_check(proc, signum, tree)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert key not in log.read_text()
