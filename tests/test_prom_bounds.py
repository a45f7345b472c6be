"""No fake precision from Prometheus histograms: a quantile inside a coarse bucket is an interval, tightened by the
run's mean, never a midpoint that looks measured."""

from __future__ import annotations

import pytest

from hpload.loadgen import prom
from hpload.loadgen.prom_quantile import format_bounds_ms, point_value, quantile_bounds
from hpload.loadgen.vocabulary import SERVER_COUNTERS, SERVER_HISTOGRAMS, SERVER_METRICS_KEYS

# vLLM's request_queue_time_seconds buckets start at 0.3 s.
QUEUE_BUCKETS = ("0.3", "0.5", "0.8", "1.0", "1.5", "2.0", "2.5", "5.0", "10.0", "+Inf")


def queue_text(count: int, total_s: float, in_first: int) -> str:
    lines = ["# TYPE vllm:request_queue_time_seconds histogram"]
    for le in QUEUE_BUCKETS:
        n = in_first if le == "0.3" else count
        lines.append(f'vllm:request_queue_time_seconds_bucket{{le="{le}",model_name="m"}} {n}')
    lines.append(f'vllm:request_queue_time_seconds_sum{{model_name="m"}} {total_s}')
    lines.append(f'vllm:request_queue_time_seconds_count{{model_name="m"}} {count}')
    return "\n".join(lines) + "\n"


def test_mean_zero_all_in_first_bucket_is_not_p50_150ms() -> None:
    # The H200 case: 512 requests, every queue time in 0-300 ms, mean 0.0 ms.
    side = prom.server_side(prom.parse(queue_text(0, 0.0, 0)), prom.parse(queue_text(512, 0.0, 512)))
    assert side is not None
    assert side["queue_count"] == 512 and side["queue_mean_ms"] == 0.0
    for q in ("p50", "p99"):
        low, high = side[f"queue_{q}_ms_bounds"]
        assert low == 0.0 and high == 0.0, (q, low, high)  # the mean pins both to zero
        assert side.get(f"queue_{q}_ms", 0.0) == 0.0  # never 150 or 297 ms
    text = format_bounds_ms(*side["queue_p50_ms_bounds"])
    assert "150" not in text
    assert set(side) <= SERVER_METRICS_KEYS, set(side) - SERVER_METRICS_KEYS  # the bounds keys are declared


def test_every_server_metrics_key_is_in_the_vocabulary() -> None:
    # Every histogram and counter prom.py reads, with narrow buckets (point values) and a coarse one (bounds only).
    lines = []
    for suffix in {s for suffixes in prom.HISTOGRAMS.values() for s in suffixes}:
        name = f"vllm:{suffix}"
        lines += [f'{name}_bucket{{le="0.01"}} 5', f'{name}_bucket{{le="0.0101"}} 10', f'{name}_bucket{{le="+Inf"}} 10',
                  f"{name}_sum 0.1", f"{name}_count 10"]
    lines += [f"vllm:{suffix} 7" for suffix in prom.COUNTERS.values()]
    side = prom.server_side(None, prom.parse("\n".join(lines) + "\n"))
    assert side is not None and "ttft_p99_ms" in side and "ttft_p50_ms_bounds" in side and "requests_succeeded" in side
    assert set(side) <= SERVER_METRICS_KEYS, set(side) - SERVER_METRICS_KEYS
    assert tuple(prom.HISTOGRAMS) == SERVER_HISTOGRAMS and tuple(prom.COUNTERS) == SERVER_COUNTERS


def test_small_mean_bounds_quantiles_inside_a_coarse_bucket() -> None:
    # 100 queue times, mean 0.2 ms, all in 0-300 ms: p50 <= 0.4 ms and p99 <= 20 ms (Markov), no point value.
    side = prom.server_side(None, prom.parse(queue_text(100, 100 * 0.0002, 100)))
    assert side is not None
    assert side["queue_p50_ms_bounds"] == pytest.approx([0.0, 0.4])
    assert side["queue_p99_ms_bounds"] == pytest.approx([0.0, 20.0])
    assert "queue_p99_ms" not in side
    assert format_bounds_ms(*side["queue_p99_ms_bounds"]) == "<= 20.0 ms"


def test_a_quantile_in_a_wide_bucket_is_an_interval_and_a_narrow_one_a_value() -> None:
    buckets = [(0.1, 0.0), (0.2, 50.0), (0.21, 100.0), (float("inf"), 100.0)]
    wide = quantile_bounds(buckets, 0.5, mean=0.15)
    assert wide == (0.1, 0.2) and point_value(wide) is None
    narrow = quantile_bounds(buckets, 0.99, mean=0.15)
    assert narrow == (0.2, 0.21)
    value = point_value(narrow)
    assert value is not None and 0.2 <= value <= 0.21
    # Above the last finite bucket, only the mean bounds it.
    tail = quantile_bounds([(0.1, 0.0), (float("inf"), 10.0)], 0.5, mean=1.0)
    assert tail == (0.1, 2.0)
