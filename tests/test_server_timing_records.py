"""The server's per-request timings through hpload's own pipeline, without a server: a stream's usage trailer ->
the request record -> its --save-requests line, the run's histograms (merged across worker processes alike), the
console lines and the TUI line."""

from __future__ import annotations

import json

import pytest

from hpload.loadgen.client import RequestRecord, _read_whole
from hpload.loadgen.recorder import Recorder
from hpload.loadgen.server_timing import summary_lines, take
from hpload.tui.panels import server_timing_line

METRICS = {"time_to_first_token_ms": 12.5, "queue_time_ms": 3.0, "generation_time_ms": 40.0, "mean_itl_ms": 2.5,
           "tokens_per_second": 300.0}  # fmt: skip


def record(i: int, ttft_ms: float, metrics: dict[str, float] | None) -> RequestRecord:
    rec = RequestRecord(i, warmup=False)
    rec.send_ns = 1_000_000_000
    rec.first_ns = rec.send_ns + int(ttft_ms * 1e6)
    rec.last_ns = rec.first_ns + 40_000_000
    rec.chunk_tokens = 17
    rec.server = take({"choices": [], "usage": {}, "metrics": metrics}) if metrics is not None else None
    return rec


def test_the_metrics_object_lands_in_the_request_line() -> None:
    line = record(0, 20.0, METRICS).to_json()
    assert line["server_ttft_ms"] == 12.5 and line["server_queue_ms"] == 3.0
    assert line["server_generation_ms"] == 40.0 and line["server_mean_itl_ms"] == 2.5
    assert line["server_tokens_per_second"] == 300.0
    assert line["ttft_gap_ms"] == pytest.approx(7.5) and line["ttft_outside_engine_ms"] == pytest.approx(4.5)
    assert "server_ttft_ms" not in record(1, 20.0, None).to_json()
    # Fields the server left out (null in vLLM) are simply absent.
    partial = record(2, 20.0, {"time_to_first_token_ms": 12.5, "queue_time_ms": None}).to_json()  # type: ignore[dict-item]
    assert "server_queue_ms" not in partial and "ttft_outside_engine_ms" not in partial
    # Whole (non-streamed) replies carry it in the body.
    rec = RequestRecord(3, warmup=False)
    _read_whole(json.dumps({"choices": [{"text": "x"}], "usage": {"completion_tokens": 1}, "metrics": METRICS}).encode(),
                rec)  # fmt: skip
    assert rec.server == METRICS


def test_histograms_merge_across_workers_and_show_in_summary_console_and_tui() -> None:
    workers = [Recorder("w", export=True) for _ in range(2)]
    for i in range(10):
        workers[i % 2].record(record(i, 20.0 + i, {**METRICS, "queue_time_ms": float(i)}))
    parent = Recorder("run")
    for w in workers:
        parent.absorb(w.delta(), source=id(w))
    result = parent.result({}, "")
    s = result.summary
    assert result.histograms["ttft_gap"].count == 10 and result.histograms["server_queue"].count == 10
    assert s["mean_ttft_gap_ms"] == pytest.approx(7.5 + 4.5, abs=0.01)  # gaps 7.5 .. 16.5
    assert s["mean_server_queue_ms"] == pytest.approx(4.5, abs=0.01)
    assert s["mean_ttft_outside_engine_ms"] == pytest.approx(7.5, abs=0.01)
    lines = summary_lines(s)
    assert any(line.startswith("client - server TTFT per request: mean 12.00") for line in lines)
    assert any("server queue per request" in line for line in lines)
    snap = parent.snapshot("done", None)
    assert "ttft gap p50" in server_timing_line(snap) and "queue p50" in server_timing_line(snap)
    # A run against a server without per-request metrics shows nothing extra.
    empty = Recorder("plain")
    empty.record(record(0, 20.0, None))
    assert summary_lines(empty.result({}, "").summary) == []
    assert server_timing_line(empty.snapshot("done", None)) == ""
