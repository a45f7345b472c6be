"""Shaped workloads against the real servers on the tiny model: every trace format replays with the server's
``usage.prompt_tokens`` equal to the trace's input lengths and its completion tokens equal to the output lengths;
on chat the template's added tokens are measured and stated; shared-prefix groups on vLLM CPU hit the prefix cache
as G, P and S imply; replay on the echo server reports schedule delay and requested vs achieved rate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_workloads import ROWS, write_trace

from hpload.loadgen import LoadSpec, Target, WorkloadSpec, run_load
from hpload.servers import Server

pytestmark = pytest.mark.slow

FORMATS = ["mooncake", "hpload", "azure", "burstgpt"]


def target_for(server: Server, tiny_model: Path | None) -> Target:
    return Target(server.base_url, server.model, api_key=server.api_key, label=server.label,
                  metrics_url=server.metrics_url, tokenizer_path=str(tiny_model) if tiny_model else None)  # fmt: skip


async def replay_all_formats(server: Server, tiny_model: Path, tmp_path: Path) -> None:
    want = sorted(ROWS, key=lambda r: r[0])
    for fmt in FORMATS:
        spec = WorkloadSpec(source="trace", path=str(write_trace(tmp_path, fmt)), block_tokens=16)
        out = tmp_path / f"{fmt}.requests.jsonl"
        result = await run_load(target_for(server, tiny_model), spec, LoadSpec(replay=True), requests_path=out)
        s, tc = result.summary, result.token_check
        assert s["completed"] == len(ROWS) and s["failed"] == 0, (fmt, result.error_samples)
        assert tc["input_checked"] == len(ROWS) and tc["input_usage_mismatch"] == 0, (fmt, tc)
        lines = sorted((json.loads(x) for x in out.read_text().splitlines()), key=lambda r: r["i"])
        assert [x["prompt_tokens"] for x in lines] == [r[1] for r in want], fmt  # the server's own usage
        assert [x["output_tokens"] for x in lines] == [r[2] for r in want], fmt  # held by ignore_eos
        stats = result.config["workload_stats"]
        assert stats["format"] == fmt and stats["sends"]["sent"] == len(ROWS)
        assert stats["input_len"]["count"] == len(ROWS)
        assert "p99" in stats["sends"]["schedule_delay_ms"] and s["p99_schedule_lag_ms"] >= 0


async def test_trace_formats_replay_exact_lengths_on_hf(hf_server: Server, tiny_model: Path, tmp_path: Path) -> None:
    await replay_all_formats(hf_server, tiny_model, tmp_path)


async def test_trace_formats_replay_exact_lengths_on_vllm(
    vllm_server: Server, tiny_model: Path, tmp_path: Path
) -> None:
    await replay_all_formats(vllm_server, tiny_model, tmp_path)


async def test_trace_on_chat_states_template_tokens(hf_server: Server, tiny_model: Path, tmp_path: Path) -> None:
    spec = WorkloadSpec(source="trace", path=str(write_trace(tmp_path, "hpload")), endpoint="chat")
    out = tmp_path / "chat.requests.jsonl"
    result = await run_load(target_for(hf_server, tiny_model), spec, LoadSpec(replay=True, time_scale=0.2),
                            requests_path=out)  # fmt: skip
    overhead = result.config["workload_stats"]["chat_template_tokens"]
    assert isinstance(overhead, int) and overhead > 0  # the tiny model's template wraps the message
    tc = result.token_check
    # Expected per request = the content's own tokens + the measured template overhead; the server agrees.
    assert tc["input_checked"] == len(ROWS) and tc["input_usage_mismatch"] == 0, tc
    # The content itself is the trace's length, give or take a token merged across the template's boundaries.
    lines = sorted((json.loads(x) for x in out.read_text().splitlines()), key=lambda r: r["i"])
    want = [r[1] for r in sorted(ROWS, key=lambda r: r[0])]
    assert all(abs(x["prompt_tokens"] - overhead - n) <= 2 for x, n in zip(lines, want, strict=True)), lines


async def test_too_long_rows_counted_not_crashing(vllm_server: Server, tiny_model: Path, tmp_path: Path) -> None:
    rows = [(0.0, 40, 4, []), (0.05, 700, 4, []), (0.1, 30, 4, [])]  # the fixture's context is 512
    path = write_trace(tmp_path, "hpload", rows)
    spec = WorkloadSpec(source="trace", path=str(path))  # max_context from vLLM's /v1/models
    result = await run_load(target_for(vllm_server, tiny_model), spec, LoadSpec(replay=True))
    assert result.summary["completed"] == 2 and result.summary["failed"] == 0
    assert result.config["workload_stats"]["skipped"] == {"too_long": 1}
    assert any("longer than the server's context (512" in w for w in result.warnings)
    clip = await run_load(target_for(vllm_server, tiny_model), spec.model_copy(update={"too_long": "clip"}),
                          LoadSpec(replay=True))  # fmt: skip
    assert clip.summary["completed"] == 3 and clip.config["workload_stats"]["clipped"] == 1


async def test_shared_prefix_hit_fraction_on_vllm(vllm_server: Server, tiny_model: Path) -> None:
    from hpload.loadgen import prom
    from hpload.scenarios.capacity_run import settle

    target = target_for(vllm_server, tiny_model)
    samples = await prom.scrape(vllm_server.metrics_url or vllm_server.base_url + "/metrics")
    assert samples is not None
    info = samples.get("vllm:cache_config_info", [])
    assert info and info[0][0].get("enable_prefix_caching") == "True", "the fixture's vLLM has no prefix caching"
    block = int(info[0][0]["block_size"])
    g, p, s, n = 2, 2 * block, 40, 8
    spec = WorkloadSpec(source="shared_prefix", prefix_groups=g, prefix_len=p, suffix_len=s, num_prompts=n,
                        max_tokens=2, ignore_eos=True)  # fmt: skip
    # Every request but each group's first finds its prefix's full blocks cached.
    implied = (n - g) * (p // block) * block / (n * (p + s))
    # The same workload twice, the cache reset before each (hpload's vLLM runs in dev mode for that): without the
    # reset the second run would hit on each group's first request too, a fraction of g * P / (n * (P + S)) more.
    for attempt in (1, 2):
        said = await settle(vllm_server.base_url, vllm_server.metrics_url, vllm_server.api_key, timeout_s=60)
        assert said == "idle; prefix cache reset", said
        result = await run_load(target, spec, LoadSpec(concurrency=1, num_requests=n))
        assert result.summary["completed"] == n
        stats = result.config["workload_stats"]
        assert implied == pytest.approx(stats["ideal_hit_fraction"])
        measured = stats["server_prefix_cache"]["hit_fraction"]  # from vLLM's /metrics counters
        usage = stats["prefix_cache"]  # from each reply's usage.prompt_tokens_details.cached_tokens
        print(f"shared prefix G={g} P={p} S={s} N={n} block={block}, run {attempt}: hit fraction from /metrics "
              f"{measured:.4f}, from usage {usage['hit_fraction']:.4f}, implied {implied:.4f}")
        assert abs(measured - implied) <= block / (p + s), (attempt, measured, implied, stats)
        assert stats["server_prefix_cache"]["queries"] == n * (p + s)
        assert usage["prompt_tokens"] == n * (p + s), usage
        assert abs(usage["hit_fraction"] - implied) <= block / (p + s), (attempt, usage, implied)


async def test_replay_on_echo_reports_schedule_delay(echo_server: Server, tmp_path: Path) -> None:
    rows = [(i * 0.01, 8, 4, []) for i in range(50)]  # 100 req/s for half a second
    spec = WorkloadSpec(source="trace", path=str(write_trace(tmp_path, "hpload", rows)), max_context=4096)
    result = await run_load(target_for(echo_server, None), spec, LoadSpec(replay=True, rate=200.0))
    sends = result.config["workload_stats"]["sends"]
    assert result.summary["completed"] == 50
    assert sends["requested_rate"] == pytest.approx(200.0)
    assert sends["achieved_rate"] == pytest.approx(200.0, rel=0.5)  # a shared 2-core machine: loose on purpose
    assert 0 <= sends["schedule_delay_ms"]["p50"] <= sends["schedule_delay_ms"]["p99"]
    assert 0 <= sends["interarrival_ks"] <= 1
    assert result.summary["total_input_tokens"] == 50 * 8  # echo counts words: one word per token without tokenizer


async def test_session_turn_k_carries_history_with_real_replies(echo_server: Server, tmp_path: Path) -> None:
    # The echo server counts words over every message and replies " x" per token: turn k's prompt is then exactly
    # the user words of turns 1..k plus the REAL replies of turns 1..k-1 (3 words each). A recorded reply sent as
    # well (the ShareGPT doubling bug) would add the gpt values' 40 words.
    path = tmp_path / "sharegpt.json"
    conv = [
        {"from": "human", "value": "a b c d"},
        {"from": "gpt", "value": "y " * 40},
        {"from": "human", "value": "e f"},
        {"from": "gpt", "value": "z " * 40},
        {"from": "human", "value": "g h i"},
    ]
    path.write_text(json.dumps([{"id": "1", "conversations": conv}, {"id": "2", "conversations": conv}]))
    spec = WorkloadSpec(source="sessions", path=str(path), endpoint="chat", max_tokens=3, think_time_s=0.01)
    result = await run_load(target_for(echo_server, None), spec, LoadSpec(concurrency=2, num_requests=6))
    assert result.summary["completed"] == 6 and result.summary["failed"] == 0
    turns = result.config["workload_stats"]["turns"]
    assert [turns[k]["mean_prompt_tokens"] for k in ("1", "2", "3")] == [4, 4 + 3 + 2, 4 + 3 + 2 + 3 + 3]
    assert all(turns[k]["completed"] == 2 and turns[k]["median_ttft_ms"] > 0 for k in ("1", "2", "3"))
    sessions = result.config["workload_stats"]["sessions"]
    assert sessions["finished"] == 2 and sessions["cut"] == 0 and sessions["mean_turns"] == 3
    assert sessions["median_duration_s"] >= 2 * 0.01  # two think times at least


async def test_generated_sessions_open_loop(echo_server: Server) -> None:
    spec = WorkloadSpec(source="sessions", endpoint="chat", session_turns=4, turn_len=5, max_tokens=2, num_prompts=3)
    result = await run_load(target_for(echo_server, None), spec, LoadSpec(rate=20.0, num_requests=12))
    turns = result.config["workload_stats"]["turns"]
    assert result.summary["completed"] == 12
    assert [turns[str(k)]["mean_prompt_tokens"] for k in range(1, 5)] == [5 * k + 2 * (k - 1) for k in range(1, 5)]


def test_trace_scenario_sweeps_rates_and_reports(tmp_path: Path) -> None:
    """A scenario file drives replay like any workload: a sweep over load.rate warps one trace to each rate, and the
    report draws the realised lengths and states requested vs achieved rate."""
    from hpload.scenarios.loader import load_text
    from hpload.scenarios.report import write_report
    from hpload.scenarios.runner import run_scenario

    rows = [(i * 0.02, 4 + i % 7, 2 + i % 3, []) for i in range(30)]
    trace = write_trace(tmp_path, "hpload", rows)
    text = f"""
name = "replay"
[[servers]]
kind = "echo"
ttft_ms = 1
itl_ms = 1
[workload]
source = "trace"
path = "{trace}"
max_context = 4096
[load]
replay = true
rate = 40.0
[sweep.load]
rate = [40.0, 120.0]
"""
    import asyncio

    report = asyncio.run(run_scenario(load_text(text, "s.toml"), results_dir=tmp_path / "r"))
    assert report.measured == 2 and report.failed == 0
    files = write_report(tmp_path / "r")
    assert any(p.name == "lengths.png" and p.stat().st_size > 0 for p in files.plots)
    md = files.markdown.read_text()
    assert "## Workload" in md and "rate requested" in md
    from hpload.scenarios.results import open_results

    store = open_results(tmp_path / "r")
    sends = [store.load_result(r).config["workload_stats"]["sends"] for r in store.records()]
    assert sorted(x["requested_rate"] for x in sends) == pytest.approx([40.0, 120.0])
    assert all(x["sent"] == 30 for x in sends)


def test_cli_trace_flag_replays_a_file_on_a_url_with_tokenizer(echo_server: Server, tiny_model: Path,
                                                                 tmp_path: Path) -> None:  # fmt: skip
    """``hpload run --server URL --tokenizer DIR --trace FILE``: an attached server gets exact token-id prompts."""
    import subprocess
    import sys

    results = tmp_path / "adhoc"
    trace = write_trace(tmp_path, "burstgpt")
    cmd = [sys.executable, "-m", "hpload", "run", "--server", echo_server.base_url, "--tokenizer", str(tiny_model),
           "--trace", str(trace), "--results", str(results), "--quiet"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (point,) = sorted((results / "points").glob("*.point.json"))
    summary = json.loads(point.read_text())["summary"]
    assert summary["completed"] == len(ROWS)
    # The echo server counts a token-id prompt's ids: the trace's lengths exactly.
    assert summary["total_input_tokens"] == sum(r[1] for r in ROWS)


async def test_sessions_count_requests_when_asked(echo_server: Server) -> None:
    """session_load = "requests": a thinking session holds no request slot, so more sessions start than slots."""
    base = WorkloadSpec(source="sessions", endpoint="chat", session_turns=3, turn_len=3, max_tokens=2,
                        num_prompts=4, think_time_s=0.5)  # fmt: skip
    load = LoadSpec(concurrency=2, duration_s=1.0, drain_timeout_s=5.0)
    by_sessions = await run_load(target_for(echo_server, None), base, load)
    by_requests = await run_load(target_for(echo_server, None), base.model_copy(update={"session_load": "requests"}),
                                 load)  # fmt: skip
    started = [r.config["workload_stats"]["sessions"]["started"] for r in (by_sessions, by_requests)]
    assert started[0] == 2  # one session per slot, each thinking 0.5 s twice: 1 s is not enough for more
    assert started[1] > 4, started  # replies take ~50 ms: slots free up while sessions think
    assert by_requests.summary["completed"] > 2 * by_sessions.summary["completed"]


async def test_replay_with_two_workers_keeps_the_workload_stats(echo_server: Server, tmp_path: Path) -> None:
    rows = [(i * 0.01, 5, 2, []) for i in range(40)]
    spec = WorkloadSpec(source="trace", path=str(write_trace(tmp_path, "hpload", rows)), max_context=4096)
    result = await run_load(target_for(echo_server, None), spec, LoadSpec(replay=True, workers=2))
    stats = result.config["workload_stats"]
    assert result.summary["completed"] == 40 and stats["rows"] == 40
    assert stats["sends"]["sent"] == 40 and stats["sends"]["requested_rate"] == pytest.approx(100.0, rel=0.1)
