"""Golden tests, zero tolerance: against the echo server's known chunk patterns (several tokens in one chunk, an
empty delta, a role-only first chat chunk, a usage-only last chunk, a stream without usage), hpload's token counts
equal what the server sent, exactly, and its TTFT and every ITL match the server's traced write times within
0.05 ms at p99."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import EchoProc

from hpload.loadgen import LoadSpec, Target, WorkloadSpec, run_load
from hpload.loadgen.starvation import RunQueueMeter
from hpload.servers.echo.chunks import plan

N, TOKENS, INPUT_LEN = 16, 10, 12
TTFT_MS, ITL_MS = 20.0, 5.0
P99_ERROR_MS = 0.05
# Run-queue wait (a share of the run's wall time) above which the host, not the client, is judged to be in the way.
STARVED_WAIT_PERCENT = 5.0


@pytest.fixture
def echo_factory(tmp_path: Path) -> Iterator[Any]:
    started: list[EchoProc] = []

    def make(chunks: str) -> EchoProc:
        started.append(EchoProc(tmp_path / f"echo-{chunks}.log", "--precise", "--ttft-ms", str(TTFT_MS),
                                "--itl-ms", str(ITL_MS), "--chunks", chunks, trace=tmp_path / f"trace-{chunks}.jsonl"))  # fmt: skip
        return started[-1]

    yield make
    for e in started:
        e.stop()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


CASES = [
    ("multi", "completions"), ("multi", "chat"), ("empty", "completions"), ("empty", "chat"), ("role", "chat"),
    ("usage-last", "completions"), ("usage-last", "chat"), ("no-usage", "completions"), ("no-usage", "chat"),
    ("mixed", "completions"), ("mixed", "chat"),
]  # fmt: skip


@pytest.mark.parametrize(("chunks", "endpoint"), CASES)
async def test_counts_and_timings_equal_what_the_server_sent(
    echo_factory: Any, tmp_path: Path, chunks: str, endpoint: str
) -> None:
    echo = echo_factory(chunks)
    chat = endpoint == "chat"
    workload = WorkloadSpec(endpoint=endpoint, input_len=INPUT_LEN, max_tokens=TOKENS, num_prompts=N,
                            return_token_ids=True)  # fmt: skip
    req_path = tmp_path / "req.jsonl"
    client_wait, server_wait = RunQueueMeter(), RunQueueMeter(echo.proc.pid)
    result = await run_load(Target(echo.url, "echo", label="echo"), workload, LoadSpec(concurrency=4, num_requests=N),
                            requests_path=req_path)  # fmt: skip
    waits = (client_wait.total(), server_wait.total())
    echo.stop()
    s = result.summary
    assert s["completed"] == N and s["failed"] == 0, result.error_samples
    writes_plan = plan(chunks, chat, TOKENS, include_usage=True, token_ids=True)
    token_writes = [j for j, w in enumerate(writes_plan) if w.tokens]
    usage_sent = chunks not in ("no-usage", "mixed")

    lines = {line["request_id"]: line for line in read_jsonl(req_path)}
    trace = {t["id"]: t for t in read_jsonl(echo.trace)}
    assert set(lines) <= set(trace) and len(lines) == N
    ttft_err, itl_err = [], []
    for rid, line in lines.items():
        # Counts, exactly: the server sent TOKENS tokens in every reply, whatever the chunking.
        assert line["output_tokens"] == TOKENS and line["chunk_tokens"] == TOKENS, line
        assert line["prompt_tokens"] == (INPUT_LEN if usage_sent else None), line
        writes, sent = trace[rid]["write_ns"], trace[rid]["sent_ns"]
        assert len(writes) == len(writes_plan)
        before = np.array([writes[j] for j in token_writes], dtype=np.int64)
        after = np.array([sent[j] for j in token_writes], dtype=np.int64)
        itl_ns = np.array(line.get("itl_ms", [])) * 1e6
        # One ITL per gap between token-bearing writes: none for a role-only or usage-only write.
        assert len(itl_ns) == len(before) - 1, line
        # The client's arrival of each token chunk, and how far it lies outside the server's bracket of that write
        # (stamped just before and just after send(): a preempted server widens its bracket, not the error).
        arrival = line["send_ns"] + line["ttft_ms"] * 1e6 + np.concatenate(([0.0], np.cumsum(itl_ns)))
        outside = arrival - np.clip(arrival, before, after)
        ttft_err.append(outside[0] / 1e6)
        itl_err.extend(np.diff(outside) / 1e6)
    assert s["total_output_tokens"] == N * TOKENS
    assert result.token_check["output_chunk_tokens"] == N * TOKENS
    assert result.token_check["output_usage_mismatch"] == 0
    if usage_sent:
        assert s["total_input_tokens"] == N * INPUT_LEN and result.token_check["usage_reported"] == N
    # Timings: the client's stamps against the server's traced writes. The client stamps kernel arrival, so its
    # error is the clock conversion; a client that read the role chunk or the usage chunk as a token would be a
    # whole write (5 ms) off.
    assert result.histograms["itl"].count == N * (len(token_writes) - 1)
    p99 = {name: float(np.percentile(np.abs(err), 99)) for name, err in (("ttft", ttft_err), ("itl", itl_err))}
    if max(p99.values()) > P99_ERROR_MS and starved_host(*waits):
        # Another process held this host's CPUs: a socket's delivery waited whole time slices, so two writes shared
        # one receive stamp. That is the host's error, not the client's; the counts above were still checked.
        pytest.skip(f"host starved (run-queue wait: client {waits[0]:.0f}%, server {waits[1]:.0f}% of the run):"
                    f" timing not judged, error p99 {p99}")  # fmt: skip
    for name, value in p99.items():
        assert value <= P99_ERROR_MS, f"{chunks}/{endpoint} {name} error p99 {value:.4f} ms (run-queue wait {waits})"


def starved_host(client_wait: float | None, server_wait: float | None) -> bool:
    return any(w is not None and w >= STARVED_WAIT_PERCENT for w in (client_wait, server_wait))


async def test_several_tokens_per_chunk_without_token_ids_counts_usage(echo_factory: Any, tmp_path: Path) -> None:
    """Without token ids the client counts one per token-bearing chunk (vLLM bench's rule) and takes the server's
    usage as the count: output tokens still equal what the server sent, and the mismatch is reported, not hidden."""
    echo = echo_factory("multi")
    workload = WorkloadSpec(input_len=INPUT_LEN, max_tokens=TOKENS, num_prompts=N)
    result = await run_load(Target(echo.url, "echo", label="echo"), workload, LoadSpec(concurrency=4, num_requests=N))
    chunks_sent = sum(1 for w in plan("multi", False, TOKENS, True, False) if w.tokens)
    assert result.summary["total_output_tokens"] == N * TOKENS
    assert result.token_check["output_chunk_tokens"] == N * chunks_sent < N * TOKENS
    assert result.token_check["output_usage_mismatch"] == N
