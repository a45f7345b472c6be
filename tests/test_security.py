"""Fault matrix, security: loopback by default (and a warning or refusal when bound wider), API keys enforced and
never leaked (results, logs, console output, argv, the TUI's settings text), and subprocesses never started through
a shell.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from hpload.servers import EchoSettings, HFSettings, Server, VllmSettings, make_server
from hpload.servers.base import free_port

ROOT = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ["hpload", "servers", "loadgen", "scenarios", "tui", "benchmarks"]


def listening_addresses(pids: list[int]) -> set[str]:
    found = set()
    for conn in psutil.net_connections(kind="inet"):
        if conn.status == psutil.CONN_LISTEN and conn.pid in pids and conn.laddr:
            found.add(conn.laddr.ip)
    return found


# ---------------------------------------------------------------- binding


def test_every_server_kind_defaults_to_loopback() -> None:
    assert EchoSettings().host == "127.0.0.1"
    assert HFSettings().host == "127.0.0.1"
    assert VllmSettings().host == "127.0.0.1"
    for kind in ("hf", "echo", "vllm"):
        out = subprocess.run([sys.executable, "-m", "hpload", "serve", kind, "--help"], capture_output=True, text=True,
                             timeout=60).stdout  # fmt: skip
        assert "default loopback only" in " ".join(out.split()), out


def test_running_echo_listens_on_loopback_only(echo_server: Server) -> None:
    assert listening_addresses(echo_server.pids()) == {"127.0.0.1"}


@pytest.mark.slow
def test_running_wrapper_listens_on_loopback_only(hf_server: Server) -> None:
    assert listening_addresses(hf_server.pids()) == {"127.0.0.1"}


def test_echo_refuses_a_wider_bind() -> None:
    proc = subprocess.run([sys.executable, "-m", "hpload.servers.echo", "--host", "0.0.0.0", "--port", "0"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2 and "--host" in proc.stderr and "127.0.0.1" in proc.stderr, proc.stderr


@pytest.mark.slow
def test_wrapper_bound_wider_warns_and_a_key_guards_it(tiny_model: Path, tmp_path: Path) -> None:
    key = "sk-wrap-" + os.urandom(8).hex()
    port = free_port()
    log = tmp_path / "hf.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hpload", "serve", "hf", "--model", str(tiny_model), "--host", "0.0.0.0",
             "--port", str(port), "--served-model-name", "tiny"],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "HPLOAD_API_KEY": key},
        )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(f"{base}/health", timeout=2, trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        body = {"model": "tiny", "prompt": "x", "max_tokens": 2}
        assert httpx.post(f"{base}/v1/completions", json=body, timeout=60, trust_env=False).status_code == 401
        assert httpx.get(f"{base}/v1/models", timeout=60, trust_env=False).status_code == 401
        auth = {"Authorization": f"Bearer {key}"}
        assert httpx.post(f"{base}/v1/completions", json=body, headers=auth, timeout=60,
                          trust_env=False).status_code == 200  # fmt: skip
        assert key not in " ".join(psutil.Process(proc.pid).cmdline())
    finally:
        proc.terminate()
        proc.wait(60)
    text = log.read_text()
    assert "reachable beyond this machine" in text, text
    assert key not in text


# ---------------------------------------------------------------- API keys: enforced, never leaked


async def test_echo_with_a_key_rejects_requests_without_it(tmp_path: Path) -> None:
    key = "sk-echo-" + os.urandom(8).hex()
    async with make_server(EchoSettings(api_key=key, ttft_ms=1, itl_ms=1), workdir=tmp_path) as server:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10, trust_env=False) as client:
            body = {"model": server.model, "prompt": "a", "max_tokens": 2}
            assert (await client.post("/v1/completions", json=body)).status_code == 401
            wrong = {"Authorization": "Bearer not-the-key"}
            assert (await client.post("/v1/completions", json=body, headers=wrong)).status_code == 401
            assert (await client.post("/v1/completions", json=body, headers=server.headers())).status_code == 200
        cmdline = " ".join(" ".join(psutil.Process(pid).cmdline()) for pid in server.pids())
        assert key not in cmdline, "the key shows in ps"


def test_an_echo_without_a_key_ignores_a_key_in_hploads_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from hpload.servers.echo.server import API_KEY_ENV

    monkeypatch.setenv(API_KEY_ENV, "inherited")

    async def go() -> int:
        async with make_server(EchoSettings(ttft_ms=1, itl_ms=1), workdir=tmp_path) as server:
            async with httpx.AsyncClient(base_url=server.base_url, timeout=10, trust_env=False) as client:
                body = {"model": server.model, "prompt": "a", "max_tokens": 2}
                return (await client.post("/v1/completions", json=body)).status_code

    assert asyncio.run(go()) == 200


def test_a_wrapper_without_a_key_gets_an_empty_key_variable(tiny_model: Path) -> None:
    from hpload.servers.hf.launcher import API_KEY_ENV, HFServer

    assert HFServer(HFSettings(model=str(tiny_model))).env()[API_KEY_ENV] == ""
    assert HFServer(HFSettings(model=str(tiny_model), api_key="k")).env()[API_KEY_ENV] == "k"


def test_a_key_never_reaches_results_logs_or_output(tmp_path: Path) -> None:
    key = "sk-secret-" + os.urandom(8).hex()
    scenario = tmp_path / "keyed.toml"
    scenario.write_text(f"""
name = "keyed"
[[servers]]
kind = "echo"
label = "echo"
ttft_ms = 2
itl_ms = 1
api_key = "{key}"
[workload]
input_len = 4
max_tokens = 4
[load]
concurrency = 2
num_requests = 10
[sweep.load]
concurrency = [1, 2]
""")
    results = tmp_path / "results"
    proc = subprocess.run([sys.executable, "-m", "hpload", "run", str(scenario), "--results", str(results)],
                          capture_output=True, text=True, timeout=180)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The key worked (every request passed the 401 check) ...
    points = [json.loads(p.read_text()) for p in (results / "points").glob("*.point.json")]
    assert len(points) == 2 and all(p["summary"]["completed"] == 10 for p in points), points
    # ... and is nowhere: results, server logs, console output.
    files = [p for p in results.rglob("*") if p.is_file()]
    assert any(p.suffix == ".log" for p in files), files
    for path in files:
        assert key.encode() not in path.read_bytes(), path
    assert key not in proc.stdout + proc.stderr
    # A bad key in the same file is reported without echoing it.
    scenario.write_text(scenario.read_text().replace(f'api_key = "{key}"', f"api_key = {{ k = \"{key}\" }}"))
    bad = subprocess.run([sys.executable, "-m", "hpload", "run", str(scenario), "--results", str(results)],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert bad.returncode == 2 and "api_key" in bad.stderr, bad.stderr
    assert key not in bad.stdout + bad.stderr


def test_settings_never_print_a_key() -> None:
    key = "sk-print-" + os.urandom(8).hex()
    for settings in (EchoSettings(api_key=key), HFSettings(api_key=key), VllmSettings(api_key=key)):
        for text in (str(settings), repr(settings), settings.model_dump_json(), str(settings.model_dump(mode="json"))):
            assert key not in text, type(settings).__name__


def test_the_tui_never_unwraps_a_key() -> None:
    # The TUI shows settings only through the models above (SecretStr prints as stars); unwrapping one is the only
    # way it could show a key, so no TUI module may do it.
    sources = sorted((ROOT / "tui").glob("*.py"))
    assert sources
    for path in sources:
        assert "get_secret_value" not in path.read_text(), f"{path.name} unwraps a secret"


async def test_the_tui_never_shows_a_key(tmp_path: Path) -> None:
    """The real TUI runs a keyed echo scenario; no screen it draws (setup, run, log tail) contains the key."""
    import time

    from hpload.tui.app import HploadApp
    from hpload.tui.panels import ServerPanel
    from hpload.tui.plans import ScenarioChoice
    from hpload.tui.run import RunScreen

    key = "sk-tui-" + os.urandom(8).hex()
    path = tmp_path / "keyed.toml"
    path.write_text(f"""
name = "keyed-tui"
[[servers]]
kind = "echo"
label = "echo"
ttft_ms = 2.0
itl_ms = 1.0
api_key = "{key}"
[workload]
input_len = 4
max_tokens = 8
[load]
concurrency = 2
duration_s = 60
""")
    app = HploadApp([ScenarioChoice("keyed-tui", path)], initial="keyed-tui", results_root=tmp_path / "results")
    screens: list[str] = []
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause(0.5)
        screens.append(app.export_screenshot())
        await pilot.press("ctrl+s")
        deadline = time.monotonic() + 90
        done = 0
        while time.monotonic() < deadline:
            await pilot.pause(0.3)
            if isinstance(app.screen, RunScreen):
                panel: ServerPanel = app.screen.panels()[0]
                done = panel.snapshot.requests_completed if panel.snapshot else 0
                if done >= 20:
                    break
        assert done >= 20, "the keyed run never got answers: the TUI did not send the key"
        screens.append(app.export_screenshot())
        await pilot.press("s")
        await pilot.pause(1.0)
        screens.append(app.export_screenshot())
    assert "echo" in screens[1]  # the screenshot carries the screen's text
    for svg in screens:
        assert key not in svg
    assert all(key.encode() not in p.read_bytes() for p in (tmp_path / "results").rglob("*") if p.is_file())


# ---------------------------------------------------------------- no shell


SHELL_CALLS = {("os", "system"), ("os", "popen"), ("subprocess", "getoutput"), ("subprocess", "getstatusoutput"),
               ("asyncio", "create_subprocess_shell")}  # fmt: skip


def shell_uses(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Attribute):
            base = func.value.id if isinstance(func.value, ast.Name) else ""
            if (base, func.attr) in SHELL_CALLS or func.attr == "create_subprocess_shell":
                found.append(f"{path.name}:{node.lineno} {base}.{func.attr}")
        for kw in node.keywords:
            if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                found.append(f"{path.name}:{node.lineno} shell=...")
    return found


def test_no_subprocess_goes_through_a_shell() -> None:
    files = [p for d in SOURCE_DIRS for p in (ROOT / d).rglob("*.py")]
    assert len(files) > 40, files
    offenders = [hit for path in files for hit in shell_uses(path)]
    assert offenders == [], offenders


def test_the_scanner_finds_shell_use(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import os, subprocess, asyncio\nos.system('x')\nsubprocess.run('x', shell=True)\n"
                   "asyncio.create_subprocess_shell('x')\nsubprocess.run(['x'], shell=False)\n")  # fmt: skip
    assert len(shell_uses(bad)) == 3
