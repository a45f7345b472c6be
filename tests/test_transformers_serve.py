"""HuggingFace's `transformers serve` (kind "transformers") as a real subprocess on the tiny model (CPU).

Both batching modes stream tokens whose count matches what hpload reports; the request fields it refuses are left
out and said so; a setting the installed version lacks is refused before anything starts; config-only model
directories get random weights; the three engines run side by side in one scenario.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from hpload.loadgen.specs import SLO, LoadSpec, WorkloadSpec
from hpload.loadgen.workload import build_requests
from hpload.scenarios.runner import ServerKeeper, measure, target_for
from hpload.servers import Server
from hpload.servers.transformers_serve import TransformersSettings

pytestmark = pytest.mark.slow

HPLOAD = [sys.executable, "-m", "hpload"]


async def _stream(base_url: str, model: str, max_tokens: int, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """One streamed completion read by hand: chunks with text, the usage, and whether [DONE] came."""
    body = body or {"model": model, "prompt": "the quick brown fox", "max_tokens": max_tokens, "temperature": 0,
                    "stream": True}
    out: dict[str, Any] = {"chunks": 0, "usage": None, "done": False, "finish": None}
    async with httpx.AsyncClient(base_url=base_url, timeout=120, trust_env=False) as client:
        async with client.stream("POST", "/v1/completions", json=body) as resp:
            assert resp.status_code == 200, await resp.aread()
            async for line in resp.aiter_lines():
                if line == "data: [DONE]":
                    out["done"] = True
                if not line.startswith("data: {"):
                    continue
                obj = json.loads(line[6:])
                if obj.get("usage"):
                    out["usage"] = obj["usage"]
                for choice in obj["choices"]:
                    out["chunks"] += 1 if choice.get("text") else 0
                    out["finish"] = choice.get("finish_reason") or out["finish"]
    return out


async def _refuses(base_url: str, model: str, field: str, value: Any) -> int:
    async with httpx.AsyncClient(base_url=base_url, timeout=120, trust_env=False) as client:
        resp = await client.post("/v1/completions", json={"model": model, "prompt": "x", "max_tokens": 2, field: value})
    return resp.status_code


async def _by_hand_and_by_hpload(settings: TransformersSettings, workdir: Path) -> tuple[list[dict[str, Any]], Any,
                                                                                      list[dict[str, Any]], Server]:
    keeper = ServerKeeper(workdir=workdir)
    workload = WorkloadSpec(input_len=16, num_prompts=4, max_tokens=10, ignore_eos=True, min_tokens=10, seed=1)
    try:
        server = await keeper.ensure(settings)
        # What the installed server does with vLLM's extensions: refused outright (so hpload must not send them).
        assert await _refuses(server.base_url, server.model, "ignore_eos", True) == 422
        assert await _refuses(server.base_url, server.model, "min_tokens", 4) == 422
        # The very bodies hpload sends, streamed by hand one at a time (temperature 0: the same tokens again).
        bodies = [json.loads(r.body) for r in build_requests(workload, target_for(server, settings))]
        assert not any("ignore_eos" in b or "min_tokens" in b for b in bodies)
        by_hand = [await _stream(server.base_url, server.model, 0, body=b) for b in bodies]
        requests_path = workdir / "requests.jsonl"
        result, error = await measure(keeper, settings, workload, LoadSpec(concurrency=1, num_requests=len(bodies)),
                                      SLO(), requests_path=requests_path)
        assert error is None, error
        assert result is not None
        records = sorted((json.loads(ln) for ln in requests_path.read_text().splitlines()), key=lambda r: r["i"])
        return by_hand, result, records, server
    finally:
        await keeper.close()


@pytest.mark.parametrize("continuous", [False, True], ids=["plain", "continuous-batching"])
async def test_streams_tokens_whose_count_matches_what_hpload_reports(
    continuous: bool, tiny_model: Path, tmp_path: Path
) -> None:
    settings = TransformersSettings(model=str(tiny_model), dtype="float32", device="cpu", torch_threads=1,
                                    continuous_batching=continuous)
    by_hand, result, records, server = await _by_hand_and_by_hpload(settings, tmp_path)

    # By hand: every stream ends with the server's usage and no [DONE] (the body's end ends it). Tokens that decode
    # to no text (special tokens, EOS: random weights make many) get no chunk, so chunks never exceed usage.
    for out in by_hand:
        assert out["done"] is False
        assert out["finish"] in ("length", "stop")
        assert 1 <= out["usage"]["completion_tokens"] <= 10
        assert out["chunks"] <= out["usage"]["completion_tokens"]

    # Through hpload: every request succeeded although the workload asked for ignore_eos and min_tokens (left out),
    # and the tokens it reports, request by request and in total, are the ones the streams carried.
    s, tc = result.summary, result.token_check
    assert (s["completed"], s["failed"]) == (len(by_hand), 0), s["errors"]
    assert [r["output_tokens"] for r in records] == [h["usage"]["completion_tokens"] for h in by_hand]
    assert s["total_output_tokens"] == tc["output_usage_tokens"] == sum(h["usage"]["completion_tokens"] for h in by_hand)
    assert tc["usage_reported"] == len(by_hand)
    assert tc["input_usage_mismatch"] == 0
    caveat = [w for w in result.warnings if "does not take ignore_eos, min_tokens" in w]
    assert caveat and f"'{settings.label}'" in caveat[0], result.warnings

    # Torn down with its whole process group; its log is there for errors.
    assert not server.alive()
    assert server.log_path is not None and "Uvicorn running" in server.log_path.read_text()


def test_config_only_model_dir_gets_random_weights_offline(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An `hpload model like`-style directory (config + tokenizer, no weights) serves, with no hub access."""
    import asyncio

    like = tmp_path / "like"
    like.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        if (tiny_model / name).is_file():
            shutil.copy2(tiny_model / name, like / name)
    settings = TransformersSettings(model=str(like), dtype="float32", device="cpu", torch_threads=1)

    async def go() -> tuple[dict[str, Any], Path]:
        from hpload.servers import make_server

        async with make_server(settings, workdir=tmp_path / "w") as server:
            assert server.model != str(like)  # it serves the staged random weights
            staged = Path(server.model)
            assert (staged / "model.safetensors").is_file()
            return await _stream(server.base_url, server.model, max_tokens=4), staged

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out, staged = asyncio.run(go())
    assert out["usage"]["completion_tokens"] >= 1
    assert not staged.exists()  # removed on stop


def test_a_setting_the_installed_version_lacks_is_refused_before_start(tmp_path: Path) -> None:
    """A transformers without --compile (an older serve.py) refuses `compile = true` in one line naming both."""
    fake = tmp_path / "site"
    (fake / "transformers" / "cli").mkdir(parents=True)
    (fake / "transformers" / "__init__.py").write_text("")
    (fake / "transformers" / "cli" / "serve.py").write_text(
        "class Serve:\n    def __init__(self, force_model=None, continuous_batching=False, dtype='auto',\n"
        "                 device='auto', host='localhost', port=8000):\n        pass\n"
    )
    dist = fake / "transformers-4.99.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: transformers\nVersion: 4.99.0\n")
    env = {**os.environ, "PYTHONPATH": str(fake)}
    scenario = tmp_path / "s.toml"
    scenario.write_text('name = "s"\n[[servers]]\nkind = "transformers"\ncompile = true\n[load]\nconcurrency = 1\n')
    for argv in (["serve", "transformers", "--compile"], ["run", str(scenario), "--results", str(tmp_path / "r")]):
        start = time.monotonic()
        proc = subprocess.run([*HPLOAD, *argv], capture_output=True, text=True, env=env, timeout=60)
        assert proc.returncode != 0
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert any("compile" in ln and "4.99.0" in ln and "fix:" in ln for ln in lines), proc.stderr
        assert "Traceback" not in proc.stderr
        assert time.monotonic() - start < 30  # refused while reading settings, not after a model load


def test_hpload_serve_transformers_runs_until_sigterm(tiny_model: Path, tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [*HPLOAD, "serve", "transformers", "--model", str(tiny_model), "--dtype", "float32", "--device", "cpu",
         "--torch-threads", "1", "--continuous-batching"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, cwd=tmp_path,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until ready (or the command ends)
        assert " ready at http://127.0.0.1:" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
        base_url = line.split(" ready at ")[1].split()[0]
        model = line.split("(model '")[1].split("'")[0]
        import asyncio

        out = asyncio.run(_stream(base_url, model, max_tokens=5))
        assert out["usage"]["completion_tokens"] == out["chunks"] + (out["finish"] == "stop") >= 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) is not None
        with pytest.raises(httpx.ConnectError):
            httpx.get(base_url + "/health", timeout=5, trust_env=False)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


async def test_three_servers_side_by_side(vllm_server: Server, tmp_path: Path) -> None:
    """The shipped three-servers scenario, at a tiny load: vLLM (the session's server, attached by URL so it is not
    started twice), the wrapper and `transformers serve`, same prompts, same client; the caveat names the server."""
    from hpload.scenarios.cli_run import summary_table
    from hpload.scenarios.loader import load_scenario
    from hpload.scenarios.runner import run_scenario, scenario_caveats

    def edit(data: dict[str, Any]) -> None:
        data["servers"][0] = {"kind": "external", "label": "vllm", "url": vllm_server.base_url,
                              "model": vllm_server.model}
        data["load"] = {"concurrency": 2, "num_requests": 4, "seed": 0}
        data["workload"]["max_tokens"] = 8
        data["workload"]["input_len"] = 16

    scenario = load_scenario("three-servers", edit=edit).scenario
    assert [s.kind for s in scenario.servers] == ["external", "hf", "transformers"]
    caveats = scenario_caveats(scenario)
    assert len(caveats) == 1 and "'transformers'" in caveats[0] and "ignore_eos" in caveats[0]

    report = await run_scenario(scenario, results_dir=tmp_path / "r")
    assert [r.label for r in report.records] == ["vllm", "hf", "transformers"]
    assert all(r.ok for r in report.records), [r.error for r in report.records]
    for record in report.records:
        assert record.summary["completed"] == 4 and record.summary["failed"] == 0
        assert record.summary["total_output_tokens"] > 0
    by_label = {r.label: r for r in report.records}
    # vLLM and the wrapper honour ignore_eos: exactly max_tokens each. transformers serve's result says it did not.
    assert by_label["vllm"].summary["total_output_tokens"] == by_label["hf"].summary["total_output_tokens"] == 4 * 8
    assert any("ignore_eos" in w for w in by_label["transformers"].warnings)
    assert not any("ignore_eos" in w for w in by_label["hf"].warnings)
    table = summary_table(report.records)
    assert "transformers" in table and "hf" in table and "vllm" in table


def test_tui_setup_offers_the_kind_and_shows_its_caveat() -> None:
    """The setup screen's knobs can pick `transformers serve` beside vLLM; the plan's notes carry the warning."""
    from dataclasses import replace

    from hpload.tui.plans import SERVER_KINDS, ScenarioChoice, apply_knobs, knobs_of, load_plan

    assert "transformers" in SERVER_KINDS
    plan = load_plan(ScenarioChoice("quickstart", None))  # vllm + hf, ignore_eos = true
    knobs = knobs_of(plan)
    changed = apply_knobs(plan, replace(knobs, compare_kind="transformers"))
    assert [s.kind for s in changed.scenario.servers] == ["vllm", "transformers"]
    assert any("'transformers'" in n and "ignore_eos" in n for n in changed.notes)
    assert not any("ignore_eos" in n for n in apply_knobs(plan, knobs).notes)


TUNE = """
name = "ts-tune"
[[servers]]
kind = "transformers"
label = "ts"
dtype = "float32"
device = "cpu"
torch_threads = 1
[workload]
input_len = 16
max_tokens = 6
ignore_eos = true
[load]
concurrency = 2
num_requests = 4
[tune]
sampler = "grid"
n_trials = 2
[tune.space.server.continuous_batching]
choices = [false, true]
"""


def test_hpload_tune_over_its_batching_mode(tmp_path: Path) -> None:
    """`hpload tune` restarts it per trial with the sampled setting, and warns first that ignore_eos is not taken."""
    scenario = tmp_path / "tune.toml"
    scenario.write_text(TUNE)
    results = tmp_path / "res"
    proc = subprocess.run([*HPLOAD, "tune", str(scenario), "--results", str(results), "--quiet"],
                          capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stderr[-2000:]
    warning = [ln for ln in proc.stderr.splitlines() if ln.startswith("hpload tune: warning:")]
    assert len(warning) == 1 and "'ts'" in warning[0] and "ignore_eos" in warning[0]
    records = [json.loads(p.read_text()) for p in sorted((results / "points").glob("*.point.json"))]
    assert sorted(r["server"]["continuous_batching"] for r in records) == [False, True]
    assert all(r["status"] == "ok" and r["summary"]["completed"] == 4 for r in records)
