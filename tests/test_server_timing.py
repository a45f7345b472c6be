"""The server as the judge, per request: vLLM CPU (started by hpload with --enable-per-request-metrics) and the
transformers wrapper return a ``metrics`` object per request; hpload stores it beside its own figures in the
--save-requests lines, and the client's TTFT always spans the server's queue + TTFT for the same request.

Also the golden counts against vLLM with ignore_eos, on completions and chat: output tokens equal max_tokens and
the prompt tokens hpload records equal what the server counted (its own Prometheus counter)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hpload.loadgen import LoadSpec, Target, WorkloadSpec, run_load
from hpload.loadgen.result import RunResult
from hpload.servers import Server

pytestmark = pytest.mark.slow

N, MAX_TOKENS, INPUT_LEN = 12, 16, 48
# The client's stamps are kernel receive times converted to CLOCK_MONOTONIC, the server's are CLOCK_MONOTONIC: the
# conversion is good to a few microseconds, so "never below" is checked to 10 us.
CLOCK_SLACK_MS = 0.010


def target_for(server: Server, tiny_model: Path) -> Target:
    return Target(server.base_url, server.model, api_key=server.api_key, label=server.label,
                  metrics_url=server.metrics_url, tokenizer_path=str(tiny_model))  # fmt: skip


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def run_saved(
    server: Server, tiny_model: Path, workload: WorkloadSpec, path: Path, concurrency: int = 4
) -> tuple[RunResult, list[dict[str, Any]]]:
    load = LoadSpec(concurrency=concurrency, num_requests=N)
    result = await run_load(target_for(server, tiny_model), workload, load, requests_path=path)
    assert result.summary["completed"] == N and result.summary["failed"] == 0, result.error_samples
    lines = read_lines(path)
    assert len(lines) == N
    return result, lines


def check_server_timings(result: RunResult, lines: list[dict[str, Any]], *, queue: bool = True) -> None:
    for line in lines:
        assert "server_ttft_ms" in line, f"no server timings in a --save-requests line: {sorted(line)}"
        assert line["server_ttft_ms"] > 0
        server_queue = line.get("server_queue_ms", 0.0) if not queue else line["server_queue_ms"]
        assert server_queue >= 0
        # The server's TTFT starts when its engine scheduled the request, after its queue: the client's TTFT
        # (send -> first token chunk received) spans both.
        assert line["ttft_ms"] >= line["server_ttft_ms"] + server_queue - CLOCK_SLACK_MS, line
        assert line["ttft_gap_ms"] == pytest.approx(line["ttft_ms"] - line["server_ttft_ms"])
    s = result.summary
    # One histogram entry per request, as the client's own TTFT.
    assert result.histograms["ttft_gap"].count == N
    assert s["mean_ttft_gap_ms"] == pytest.approx(sum(li["ttft_gap_ms"] for li in lines) / N, abs=0.01)
    if queue:
        assert result.histograms["server_queue"].count == N
        assert result.histograms["ttft_outside_engine"].count == N


def test_vllm_started_with_per_request_metrics(vllm_server: Server) -> None:
    # The running process's own command line, not what the launcher would build.
    pid = vllm_server._child.pid  # type: ignore[attr-defined]
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert b"--enable-per-request-metrics" in argv


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
async def test_vllm_requests_carry_server_timings_and_golden_counts(
    vllm_server: Server, tiny_model: Path, tmp_path: Path, endpoint: str
) -> None:
    workload = WorkloadSpec(endpoint=endpoint, input_len=INPUT_LEN, max_tokens=MAX_TOKENS, ignore_eos=True,
                            num_prompts=N, return_token_ids=True)  # fmt: skip
    result, lines = await run_saved(vllm_server, tiny_model, workload, tmp_path / "req.jsonl")
    check_server_timings(result, lines)
    # Golden counts, zero tolerance: ignore_eos gives exactly max_tokens per request, counted by the client from the
    # streamed token ids and by the server's usage alike.
    assert all(line["output_tokens"] == MAX_TOKENS and line["chunk_tokens"] == MAX_TOKENS for line in lines)
    tc = result.token_check
    assert tc["output_usage_mismatch"] == 0 and tc["output_chunk_tokens"] == N * MAX_TOKENS
    sm = result.server_metrics
    assert sm is not None
    assert sm["generation_tokens"] == N * MAX_TOKENS == result.summary["total_output_tokens"]
    # Prompt tokens: what hpload recorded per request adds up to exactly what the server counted.
    assert sum(line["prompt_tokens"] for line in lines) == sm["prompt_tokens"] == result.summary["total_input_tokens"]
    if endpoint == "completions":
        assert tc["input_checked"] == N and tc["input_usage_mismatch"] == 0, tc


async def test_hf_wrapper_returns_the_same_metrics_object(hf_server: Server, tiny_model: Path, tmp_path: Path) -> None:
    workload = WorkloadSpec(input_len=INPUT_LEN, max_tokens=MAX_TOKENS, num_prompts=N)
    result, lines = await run_saved(hf_server, tiny_model, workload, tmp_path / "req.jsonl")
    check_server_timings(result, lines)


async def test_hf_wrapper_chat_counts_every_token_once(hf_server: Server, tiny_model: Path, tmp_path: Path) -> None:
    # The wrapper opens a chat stream with a role-only chunk, as vLLM does: not a token, so the client's chunk count
    # equals the server's usage, request by request.
    workload = WorkloadSpec(endpoint="chat", input_len=INPUT_LEN, max_tokens=MAX_TOKENS, ignore_eos=True, num_prompts=N)
    result, lines = await run_saved(hf_server, tiny_model, workload, tmp_path / "req.jsonl")
    assert all(line["chunk_tokens"] == line["output_tokens"] == MAX_TOKENS for line in lines), lines[0]
    assert result.token_check["output_usage_mismatch"] == 0
    check_server_timings(result, lines)
