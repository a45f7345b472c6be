"""The load generator against the real servers on the tiny model: token counts agree with the servers' usage and
with their own Prometheus counters, and the server-side metrics land in the result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpload.loadgen import LoadSpec, Target, WorkloadSpec, run_load
from hpload.servers import Server

pytestmark = pytest.mark.slow

N, MAX_TOKENS, INPUT_LEN = 12, 16, 48


def target_for(server: Server, tiny_model: Path) -> Target:
    return Target(server.base_url, server.model, api_key=server.api_key, label=server.label,
                  metrics_url=server.metrics_url, tokenizer_path=str(tiny_model))  # fmt: skip


async def check_counts(
    server: Server, tiny_model: Path, workload: WorkloadSpec, requests_path: Path | None = None
) -> dict[str, int]:
    load = LoadSpec(concurrency=4, num_requests=N)
    result = await run_load(target_for(server, tiny_model), workload, load, requests_path=requests_path)
    s, tc = result.summary, result.token_check
    assert s["completed"] == N and s["failed"] == 0, result.error_samples
    assert tc["usage_reported"] == N  # every stream carried a usage trailer
    # Prompt tokens: the server's usage equals the client tokenizer's count of each synthetic prompt.
    assert tc["input_checked"] == N and tc["input_usage_mismatch"] == 0, tc
    assert s["total_input_tokens"] == tc["input_expected_tokens"]
    # Output tokens: usage is what the summary counts; each token-bearing chunk is at most one token.
    assert 0 < tc["output_chunk_tokens"] <= s["total_output_tokens"] <= N * MAX_TOKENS
    # The server's own counters moved by exactly what the client counted (no other traffic during the run).
    sm = result.server_metrics
    assert sm is not None, "no Prometheus metrics scraped"
    assert sm["generation_tokens"] == s["total_output_tokens"]
    assert sm["prompt_tokens"] == s["total_input_tokens"]
    assert sm["ttft_count"] == N and 0 < sm["ttft_mean_ms"] <= s["mean_ttft_ms"] + 1
    return tc


async def test_vllm_token_counts_match_usage(vllm_server: Server, tiny_model: Path, tmp_path: Path) -> None:
    workload = WorkloadSpec(
        input_len=INPUT_LEN, max_tokens=MAX_TOKENS, ignore_eos=True, num_prompts=N, return_token_ids=True
    )
    # Per-request records on: every request also carries its own X-Request-Id, which vLLM takes as its request id.
    tc = await check_counts(vllm_server, tiny_model, workload, tmp_path / "req.jsonl")
    lines = [json.loads(line) for line in (tmp_path / "req.jsonl").read_text().splitlines()]
    assert len({line["request_id"] for line in lines}) == N
    assert all(line["ok"] and line["output_tokens"] == MAX_TOKENS for line in lines)
    # One gap per token after the first, unless vLLM flushed two tokens in one chunk (then fewer gaps, never more).
    assert all(0 < len(line["itl_ms"]) <= MAX_TOKENS - 1 for line in lines)
    assert tc["output_usage_tokens"] == N * MAX_TOKENS  # ignore_eos: fixed output lengths
    # The client's own count from the streamed token ids equals the server's usage, request by request.
    assert tc["output_chunk_tokens"] == N * MAX_TOKENS and tc["output_usage_mismatch"] == 0


async def test_hf_wrapper_token_counts_match_usage(hf_server: Server, tiny_model: Path) -> None:
    workload = WorkloadSpec(input_len=INPUT_LEN, max_tokens=MAX_TOKENS, num_prompts=N)
    await check_counts(hf_server, tiny_model, workload)
