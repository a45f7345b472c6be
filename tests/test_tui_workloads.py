"""The TUI shows what a shaped workload is and what it is measured for: the run bar names the workload (here shared
prefix groups), and each server's panel shows the prefix-cache hits its replies report beside the ideal that G, P
and S imply. Against the session's real vLLM (hpload's vLLM reports cached tokens per request), attached by URL."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_tui import text_of, wait_for

from hpload.loadgen import prom
from hpload.scenarios.capacity_run import settle
from hpload.servers import Server
from hpload.tui.app import HploadApp
from hpload.tui.panels import ServerPanel
from hpload.tui.plans import ScenarioChoice
from hpload.tui.run import RunScreen

pytestmark = pytest.mark.slow

SCENARIO = """
name = "tui-prefix"

[[servers]]
kind = "external"
label = "vllm"
url = "{url}"
tokenizer = "{tokenizer}"

[workload]
source = "shared_prefix"
prefix_groups = {g}
prefix_len = {p}
suffix_len = {s}
num_prompts = {n}
max_tokens = 2
ignore_eos = true

[load]
concurrency = 1
num_requests = {n}
"""


async def test_panel_shows_prefix_cache_hits_beside_the_ideal(
    vllm_server: Server, tiny_model: Path, tmp_path: Path
) -> None:
    samples = await prom.scrape(vllm_server.metrics_url or vllm_server.base_url + "/metrics")
    assert samples is not None
    block = int(samples["vllm:cache_config_info"][0][0]["block_size"])
    g, p, s, n = 2, 2 * block, 40, 8
    path = tmp_path / "tui-prefix.toml"
    path.write_text(SCENARIO.format(url=vllm_server.base_url, tokenizer=tiny_model, g=g, p=p, s=s, n=n))
    said = await settle(vllm_server.base_url, vllm_server.metrics_url, vllm_server.api_key, timeout_s=60)
    assert said == "idle; prefix cache reset", said
    app = HploadApp([ScenarioChoice("tui-prefix", path)], initial="tui-prefix", results_root=tmp_path / "results")
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen), 5, "the run screen")
        run = app.screen
        assert isinstance(run, RunScreen)
        await wait_for(pilot, lambda: run.outcome is not None, 120, "the run's outcome")
        assert run.outcome is not None and run.outcome.state == "done", run.outcome
        assert f"shared prefix {g} groups x {p} + {s} tokens" in text_of(run, "#runbar")
        panel = run.panels()[0]
        assert isinstance(panel, ServerPanel) and panel.snapshot is not None
        implied = (n - g) * p / (n * (p + s))
        hits = panel.snapshot.cache_hit_fraction
        assert hits is not None and abs(hits - implied) <= block / (p + s), (hits, implied)
        line = str(panel.query_one(".health").content)
        assert f"cache   hits {hits:.1%} of prompt tokens (server usage), ideal {implied:.1%}" in line, line
