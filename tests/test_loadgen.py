"""The load generator against servers with known behaviour: the echo calibrator (set TTFT/ITL) and tiny raw asyncio
servers that misbehave on purpose."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers import start_server, stop_server, wait_s
from pydantic import ValidationError

from hpload.loadgen import SLO, LoadSpec, LoadStep, RunResult, Target, WorkloadSpec, format_table, run_load
from hpload.loadgen.client import RequestRecord
from hpload.loadgen.hist import HIGHEST_US, LatencyHistogram
from hpload.loadgen.recorder import Recorder
from hpload.loadgen.schedule import open_loop_schedule
from hpload.loadgen.snapshot import Snapshot
from hpload.servers import EchoSettings, Server, make_server

TTFT_MS, ITL_MS, TOKENS = 40.0, 8.0, 12


@pytest.fixture(scope="module")
def echo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(make_server(EchoSettings(ttft_ms=TTFT_MS, itl_ms=ITL_MS, output_tokens=TOKENS, startup_timeout_s=wait_s(60)),
                                      workdir=tmp_path_factory.mktemp("echo")))  # fmt: skip
    try:
        yield server
    finally:
        stop_server(server)


def echo_target(server: Server) -> Target:
    return Target(server.base_url, server.model, label="echo")


WORKLOAD = WorkloadSpec(input_len=16, max_tokens=TOKENS)


# ---------------------------------------------------------------- metrics against known truth


async def test_metrics_match_the_echo_servers_settings(echo: Server, tmp_path: Path) -> None:
    snaps: list[Snapshot] = []
    load = LoadSpec(concurrency=4, num_requests=40, warmup_requests=4)
    result = await run_load(echo_target(echo), WORKLOAD, load, observer=snaps.append, snapshot_interval_s=0.2,
                            requests_path=tmp_path / "req.jsonl")  # fmt: skip
    s = result.summary
    assert s["completed"] == 40 and s["failed"] == 0
    assert s["total_output_tokens"] == 40 * TOKENS
    assert s["total_input_tokens"] == 40 * 16  # echo counts words; tokenizer-less prompts are one word per token
    # Lower bounds are hard (the server cannot answer early); upper bounds leave room for a shared 2-core machine.
    assert TTFT_MS <= s["median_ttft_ms"] < TTFT_MS + 15
    assert ITL_MS - 3 < s["median_itl_ms"] < ITL_MS + 3
    assert ITL_MS - 1 < s["mean_tpot_ms"] < ITL_MS + 4
    e2el_set = TTFT_MS + (TOKENS - 1) * ITL_MS
    assert e2el_set <= s["median_e2el_ms"] < e2el_set + 20
    assert result.histograms["itl"].count == 40 * (TOKENS - 1)
    assert result.token_check["output_usage_mismatch"] == 0
    # The echo server's own /metrics: server TTFT is below the client's and close to the setting.
    sm = result.server_metrics or {}
    assert sm["generation_tokens"] == 44 * TOKENS  # warm-up requests reach the server too
    # The server's mean covers the same 44 requests as the client's lines (warm-up included: a cold first request
    # made a 40-request client mean fall below it). Both sides convert kernel receive stamps from the wall clock to
    # the monotonic one (the server for the request's arrival, the client for the first chunk's), each within a few
    # microseconds: hence the 0.05 ms of slack.
    lines = [json.loads(line) for line in (tmp_path / "req.jsonl").read_text().splitlines()]
    client_mean_all_ms = sum(line["ttft_ms"] for line in lines) / len(lines)
    assert TTFT_MS - 1 <= sm["ttft_mean_ms"] <= client_mean_all_ms + 0.05
    assert snaps[-1].phase == "done" and snaps[-1].requests_completed == 40
    assert snaps[-1].metrics["ttft"].count == 40
    # The final snapshot's rates describe the whole measured phase, not its last few milliseconds.
    assert snaps[-1].request_rate == pytest.approx(s["request_throughput"], rel=0.05)
    assert snaps[-1].output_token_rate == pytest.approx(s["output_throughput"], rel=0.05)
    assert len(lines) == 44 and sum(1 for line in lines if line["warmup"]) == 4
    for line in lines:
        assert len(line["itl_ms"]) == TOKENS - 1
        assert sum(line["itl_ms"]) == pytest.approx(line["e2el_ms"] - line["ttft_ms"], abs=1e-3)
    assert len({line["request_id"] for line in lines}) == 44
    table = format_table(result)
    assert "ttft" in table and "p99" in table


async def test_non_streamed_requests_time_the_whole_reply(echo: Server) -> None:
    workload = WorkloadSpec(input_len=4, max_tokens=5, stream=False, endpoint="chat")
    result = await run_load(echo_target(echo), workload, LoadSpec(concurrency=2, num_requests=6))
    s = result.summary
    assert s["completed"] == 6 and s["total_output_tokens"] == 30
    assert s["median_ttft_ms"] == s["median_e2el_ms"] >= TTFT_MS + 4 * ITL_MS
    assert "tpot" not in result.histograms  # one reply: no per-token timing to report


async def test_open_loop_measures_from_the_schedule(echo: Server) -> None:
    load = LoadSpec(rate=40, arrival="poisson", duration_s=1.5, seed=3)
    offsets, warm = open_loop_schedule(load)
    result = await run_load(echo_target(echo), WORKLOAD, load)
    s = result.summary
    assert s["completed"] == len(offsets) - warm
    assert s["request_rate"] == 40
    assert s["mean_ttft_from_schedule_ms"] >= s["mean_ttft_ms"]
    assert result.histograms["schedule_lag"].count == len(offsets)
    assert s["p99_schedule_lag_ms"] >= 0


async def test_closed_loop_steps_change_the_concurrency(echo: Server) -> None:
    snaps: list[Snapshot] = []
    load = LoadSpec(steps=[LoadStep(duration_s=1.0, concurrency=1), LoadStep(duration_s=1.0, concurrency=4)])
    result = await run_load(echo_target(echo), WORKLOAD, load, observer=snaps.append, snapshot_interval_s=0.1)
    early = [s.in_flight for s in snaps if s.elapsed_s < 0.9]
    late = [s.in_flight for s in snaps if 1.2 < s.elapsed_s < 1.9]
    assert early and max(early) <= 1
    assert late and max(late) >= 3
    per_request_s = (TTFT_MS + (TOKENS - 1) * ITL_MS) / 1000
    expected = 1 / per_request_s + 4 / per_request_s  # one slot for a second, then four
    assert 0.6 * expected < result.summary["completed"] <= expected + 5


async def test_stop_event_ends_the_run_and_keeps_the_result(echo: Server) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.8, stop.set)
    t0 = asyncio.get_running_loop().time()
    result = await run_load(echo_target(echo), WORKLOAD, LoadSpec(concurrency=4, duration_s=60), stop=stop)
    assert asyncio.get_running_loop().time() - t0 < 10
    assert result.summary["completed"] > 0
    assert result.summary["failed"] == 0  # requests cut by the stop are incomplete, not failures


async def test_workers_share_one_load_and_merge(echo: Server) -> None:
    snaps: list[Snapshot] = []
    load = LoadSpec(concurrency=4, num_requests=30, workers=2)
    result = await run_load(echo_target(echo), WORKLOAD, load, observer=snaps.append, snapshot_interval_s=0.2)
    s = result.summary
    assert result.workers == 2
    assert s["completed"] == 30 and s["total_output_tokens"] == 30 * TOKENS
    assert result.histograms["ttft"].count == 30
    assert TTFT_MS <= s["median_ttft_ms"] < TTFT_MS + 25
    assert snaps[-1].phase == "done" and snaps[-1].requests_completed == 30


# ---------------------------------------------------------------- errors by kind

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next((int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")), 0)
    await reader.readexactly(length)
    return head


def _sse(*events: str) -> bytes:
    payload = b"".join(f"data: {e}\n\n".encode() for e in events)
    return b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: %d\r\n\r\n" % len(payload) + payload


TOKEN = json.dumps({"choices": [{"index": 0, "text": "a"}]})


async def bad_status(status: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _read_request(reader)
    body = b'{"error": {"message": "nope"}}'
    writer.write(b"HTTP/1.1 %d Oops\r\ncontent-length: %d\r\n\r\n%s" % (status, len(body), body))
    await writer.drain()
    writer.close()


async def error_event(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _read_request(reader)
    writer.write(_sse(TOKEN, json.dumps({"error": {"message": "engine died", "code": 500}}), "[DONE]"))
    await writer.drain()
    writer.close()


async def cut_mid_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _read_request(reader)
    full = _sse(TOKEN, TOKEN, "[DONE]")
    writer.write(full[: len(full) - 20])  # promised more bytes than it sends
    await writer.drain()
    writer.close()


async def no_done(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _read_request(reader)
    writer.write(_sse(TOKEN))
    await writer.drain()
    writer.close()


async def stall_after_first_token(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
    event = f"data: {TOKEN}\n\n".encode()
    writer.write(b"%x\r\n%s\r\n" % (len(event), event))
    await writer.drain()
    await asyncio.sleep(30)


async def stall_before_headers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    if (await _read_request(reader)).startswith(b"GET"):  # the /metrics scrape gets a quick 404
        writer.write(b"HTTP/1.1 404 Not Found\r\nconnection: close\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()
        writer.close()
        return
    await asyncio.sleep(30)


async def not_json(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _read_request(reader)
    writer.write(_sse(TOKEN, '{"choices": [{"te', "[DONE]"))
    await writer.drain()
    writer.close()


async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _read_request(reader)
    writer.write(b"NOT HTTP AT ALL\r\n\r\n")
    await writer.drain()
    writer.close()


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    servers: list[asyncio.Server] = []

    async def start(handler: Handler) -> str:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        servers.append(server)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    yield start
    for server in servers:
        server.close()


def _bind(fn: Callable[..., Awaitable[None]], *args: object) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await fn(*args, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass

    return handler


@pytest.mark.parametrize(
    ("handler", "kind"),
    [
        (_bind(bad_status, 500), "http_5xx"),
        (_bind(bad_status, 429), "http_4xx"),
        (_bind(error_event), "stream"),
        (_bind(no_done), "stream"),
        (_bind(cut_mid_stream), "disconnect"),
        (_bind(stall_after_first_token), "timeout"),
        (_bind(stall_before_headers), "timeout"),
        (_bind(garbage), "disconnect"),
        (_bind(not_json), "protocol"),
    ],
    ids=["500", "429", "error-event", "no-done", "cut", "stall-idle", "stall-first", "garbage", "not-json"],
)
async def test_failures_are_counted_by_kind(raw_server, handler: Handler, kind: str) -> None:  # type: ignore[no-untyped-def]
    url = await raw_server(handler)
    load = LoadSpec(concurrency=2, num_requests=3, first_token_timeout_s=0.5, idle_timeout_s=0.4)
    result = await run_load(Target(url, "m"), WorkloadSpec(input_len=2, max_tokens=4), load)
    assert result.errors == {kind: 3}, result.error_samples
    assert result.summary["completed"] == 0 and result.summary["failed"] == 3
    assert any("every request failed" in w for w in result.warnings)


async def test_a_timed_run_ends_after_the_drain_grace_even_if_the_server_hangs(raw_server) -> None:  # type: ignore[no-untyped-def]
    url = await raw_server(_bind(stall_before_headers))
    load = LoadSpec(concurrency=3, duration_s=0.5, drain_timeout_s=0.3, first_token_timeout_s=300)
    t0 = asyncio.get_running_loop().time()
    result = await run_load(Target(url, "m"), WORKLOAD, load)
    assert asyncio.get_running_loop().time() - t0 < 5
    assert result.counters["incomplete"] == 3 and result.summary["failed"] == 0
    assert any("were cut" in w for w in result.warnings)


async def test_connection_refused_is_a_connect_error() -> None:
    import socket

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = await run_load(Target(f"http://127.0.0.1:{port}", "m"), WORKLOAD, LoadSpec(concurrency=1, num_requests=2))
    assert result.errors == {"connect": 2}


# ---------------------------------------------------------------- schedules


def test_open_loop_schedule_is_deterministic_per_seed() -> None:
    a = open_loop_schedule(LoadSpec(rate=100, duration_s=20, seed=1))
    b = open_loop_schedule(LoadSpec(rate=100, duration_s=20, seed=1))
    c = open_loop_schedule(LoadSpec(rate=100, duration_s=20, seed=2))
    assert a == b and a[0] != c[0]
    assert 1800 < len(a[0]) < 2200  # Poisson count around rate * duration
    assert a[0] == sorted(a[0]) and a[0][-1] < 20e9


def test_constant_arrivals_are_evenly_spaced_and_counted() -> None:
    offsets, warm = open_loop_schedule(LoadSpec(rate=10, arrival="constant", num_requests=20, warmup_requests=5))
    assert warm == 5 and len(offsets) == 25
    assert offsets[:3] == [0, 100_000_000, 200_000_000]


def test_gamma_burstiness_changes_the_spread_not_the_rate() -> None:
    def cv(burstiness: float) -> tuple[float, float]:
        offsets, _ = open_loop_schedule(LoadSpec(rate=50, arrival="gamma", burstiness=burstiness, num_requests=20000))
        gaps = np.diff(np.array(offsets, dtype=np.float64) / 1e9)
        return float(gaps.mean()), float(gaps.std() / gaps.mean())

    mean_bursty, cv_bursty = cv(0.25)
    mean_even, cv_even = cv(4.0)
    assert mean_bursty == pytest.approx(0.02, rel=0.05) and mean_even == pytest.approx(0.02, rel=0.05)
    assert cv_bursty == pytest.approx(2.0, rel=0.1) and cv_even == pytest.approx(0.5, rel=0.1)


def test_ramp_and_steps_shape_the_rate() -> None:
    ramp, _ = open_loop_schedule(LoadSpec(rate=100, arrival="constant", ramp_s=2, duration_s=4, seed=0))
    first_second = sum(1 for t in ramp if t < 1e9)
    last_second = sum(1 for t in ramp if 3e9 <= t < 4e9)
    assert first_second == pytest.approx(25, abs=2)  # integral of 50 t over [0, 1]
    assert last_second == pytest.approx(100, abs=2)
    steps = LoadSpec(steps=[LoadStep(duration_s=1, rate=20), LoadStep(duration_s=1, rate=80)], arrival="constant")
    offsets, _ = open_loop_schedule(steps)
    assert sum(1 for t in offsets if t < 1e9) == pytest.approx(20, abs=1)
    assert sum(1 for t in offsets if t >= 1e9) == pytest.approx(80, abs=1)


def test_warmup_seconds_lead_the_schedule() -> None:
    offsets, warm = open_loop_schedule(LoadSpec(rate=10, arrival="constant", warmup_s=1, duration_s=2))
    assert warm == 10 and len(offsets) == 30


# ---------------------------------------------------------------- recording and results


def _record(recorder: Recorder, i: int, ttft_ms: float, gaps_ms: list[float]) -> None:
    rec = RequestRecord(i, False)
    rec.send_ns = 1_000_000_000
    rec.first_ns = rec.send_ns + int(ttft_ms * 1e6)
    rec.itl_ns = [int(g * 1e6) for g in gaps_ms]
    rec.last_ns = rec.first_ns + sum(rec.itl_ns)
    rec.done_ns = rec.last_ns
    rec.chunk_tokens = len(gaps_ms) + 1
    rec.usage_out = rec.chunk_tokens
    recorder.record(rec)


def test_merged_worker_results_equal_one_recorder_with_everything() -> None:
    rng = np.random.default_rng(0)
    whole = Recorder("x", SLO(ttft_ms=50))
    parts = [Recorder("x", SLO(ttft_ms=50)) for _ in range(3)]
    for i in range(3000):
        ttft = float(rng.lognormal(3.5, 0.6))
        gaps = [float(g) for g in rng.uniform(1, 20, 7)]
        _record(whole, i, ttft, gaps)
        _record(parts[i % 3], i, ttft, gaps)
    merged = RunResult.merge([p.result({}, "") for p in parts])
    one = whole.result({}, "")
    a, b = merged.summary, one.summary
    for key in ("completed", "total_output_tokens", "p99_ttft_ms", "median_itl_ms", "p90_tpot_ms", "max_e2el_ms"):
        assert a[key] == b[key], key
    assert a["mean_ttft_ms"] == pytest.approx(b["mean_ttft_ms"], rel=1e-12)
    assert a["std_itl_ms"] == pytest.approx(b["std_itl_ms"], rel=1e-9)
    assert merged.counters["good"] == one.counters["good"] > 0


def test_result_round_trips_through_an_atomic_save(tmp_path: Path) -> None:
    recorder = Recorder("rt", SLO(ttft_ms=30))
    for i in range(100):
        _record(recorder, i, 10 + i, [5.0, 6.0])
    result = recorder.result({"request_rate": "inf"}, "2026-01-01T00:00:00+00:00")
    path = result.save(tmp_path / "out" / "result.json")
    assert sorted(p.name for p in path.parent.iterdir()) == ["result.json"]  # no temp file left behind
    loaded = RunResult.load(path)
    assert loaded.summary == result.summary
    assert json.loads(path.read_text())["summary"]["request_rate"] == "inf"


def test_hdr_log_is_readable_by_hdrhistograms_reader(tmp_path: Path) -> None:
    from hdrh.histogram import HdrHistogram
    from hdrh.log import HistogramLogReader

    recorder = Recorder("log")
    for i in range(50):
        _record(recorder, i, 10 + i, [5.0, 7.0])
    result = recorder.result({}, "")
    path = result.save_hdr_log(tmp_path / "run.hlog")
    reader = HistogramLogReader(str(path), HdrHistogram(1, 3_600_000_000, 3))
    seen = []
    while (hist := reader.get_next_interval_histogram()) is not None:
        seen.append((hist.get_tag(), hist.get_total_count()))
    assert dict(seen) == {"ttft": 50, "e2el": 50, "tpot": 50, "itl": 100}


def test_values_beyond_the_histogram_are_counted_not_dropped() -> None:
    hist = LatencyHistogram()
    for v in (5, 10, HIGHEST_US * 2):
        hist.record_us(v)
    hist.flush()
    assert hist.overflows == 1
    assert hist.moments.count == 3 and hist.moments.high == HIGHEST_US * 2
    assert hist.hdr.get_total_count() == 2


def test_slo_lists_each_violation() -> None:
    recorder = Recorder("slo", SLO(ttft_ms=50))
    for i in range(100):
        _record(recorder, i, 10.0 if i < 90 else 200.0, [5.0])
    result = recorder.result({}, "")
    assert result.counters["good"] == 90
    assert SLO(ttft_p99_ms=100).violations(result) == [f"ttft_p99_ms {result.summary['p99_ttft_ms']:.1f} > 100"]
    assert SLO(ttft_p50_ms=100, tpot_p99_ms=10).violations(result) == []
    assert SLO(min_goodput=1e9).violations(result)[0].startswith("min_goodput")


def test_specs_reject_typos_and_contradictions() -> None:
    with pytest.raises(ValidationError, match="concurrenc"):
        LoadSpec(concurrenccy=4, num_requests=3)  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="exactly one of concurrency"):
        LoadSpec(concurrency=4, rate=2, num_requests=3)
    with pytest.raises(ValidationError, match="duration_s/num_requests"):
        LoadSpec(concurrency=4)
    with pytest.raises(ValidationError, match="path"):
        WorkloadSpec(source="jsonl")
    with pytest.raises(ValidationError):
        LoadSpec(concurrency=1, num_requests=1, keepalive_expiry_s=5)  # must stay below servers' 5 s


def test_prometheus_before_after_difference() -> None:
    from hpload.loadgen import prom

    def text(count: int, total: float, fast: int, gen: int) -> str:
        return (
            "# TYPE vllm:time_to_first_token_seconds histogram\n"
            f'vllm:time_to_first_token_seconds_bucket{{le="0.01",model_name="m"}} {fast}\n'
            f'vllm:time_to_first_token_seconds_bucket{{le="0.1",model_name="m"}} {count}\n'
            f'vllm:time_to_first_token_seconds_bucket{{le="+Inf",model_name="m"}} {count}\n'
            f'vllm:time_to_first_token_seconds_sum{{model_name="m"}} {total}\n'
            f'vllm:time_to_first_token_seconds_count{{model_name="m"}} {count}\n'
            f'vllm:generation_tokens_total{{model_name="m"}} {gen}\n'
        )

    before = prom.parse(text(10, 0.5, 10, 100))
    after = prom.parse(text(30, 1.5, 10, 400))
    side = prom.server_side(before, after)
    assert side is not None
    assert side["ttft_count"] == 20 and side["ttft_mean_ms"] == pytest.approx(50.0)
    assert side["generation_tokens"] == 300
    # Every observation sits in the 10-100 ms bucket: p50 is that interval, not an interpolated point.
    assert side["ttft_p50_ms_bounds"] == pytest.approx([10.0, 100.0]) and "ttft_p50_ms" not in side
    assert prom.ttft_gap_warning(120.0, side) is not None and prom.ttft_gap_warning(52.0, side) is None


def test_synthetic_prompts_have_the_measured_length(tmp_path: Path) -> None:
    from hpload.loadgen.workload import build_requests
    from hpload.model import ensure_tiny_model

    model = ensure_tiny_model()
    spec = WorkloadSpec(input_len=64, input_len_spread=0.25, num_prompts=50, seed=5)
    reqs = build_requests(spec, Target("http://x", "m", tokenizer_path=str(model)))
    lengths = [r.expected_in for r in reqs]
    assert all(n is not None and 46 <= n <= 82 for n in lengths), lengths
    assert len(set(lengths)) > 5  # a spread, not one length
    assert reqs == build_requests(spec, Target("http://x", "m", tokenizer_path=str(model)))  # seeded
    body = json.loads(reqs[0].body)
    assert body["stream_options"] == {"include_usage": True} and body["max_tokens"] == 128


def test_humaneval_and_jsonl_workloads(tmp_path: Path) -> None:
    from hpload.errors import HploadError
    from hpload.loadgen.workload import build_requests

    he = build_requests(WorkloadSpec(source="humaneval", endpoint="chat"), Target("http://x", "m"))
    assert len(he) == 164 and "def " in json.loads(he[0].body)["messages"][0]["content"]
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "hi", "max_tokens": 3}\n\n{"messages": [{"role": "user", "content": "yo"}]}\n')
    got = [json.loads(r.body) for r in build_requests(WorkloadSpec(source="jsonl", path=str(path)), Target("h", "m"))]
    assert got[0]["prompt"] == "hi" and got[0]["max_tokens"] == 3 and got[1]["prompt"] == "yo"
    path.write_text('{"text": "no prompt"}\n')
    with pytest.raises(HploadError, match="line 1"):
        build_requests(WorkloadSpec(source="jsonl", path=str(path)), Target("h", "m"))


def test_histogram_view_is_drawable() -> None:
    hist = LatencyHistogram()
    for v in range(1000, 100000, 7):
        hist.record_us(v)
    view = hist.view(buckets=20)
    assert len(view.edges_ms) == 21 and sum(view.counts) == hist.count
    assert view.edges_ms[0] <= 1.0 and view.edges_ms[-1] >= 99.99
    assert math.isclose(view.p50_ms, hist.percentile_us(50) / 1000)


# ---------------------------------------------------------------- client health and robustness


async def test_a_blocked_event_loop_is_reported_as_a_client_bottleneck(echo: Server) -> None:
    import time

    def slow_observer(snap: Snapshot) -> None:
        time.sleep(0.06)  # a view that blocks the loop: the client's own numbers become suspect

    load = LoadSpec(concurrency=4, duration_s=1.5)
    result = await run_load(echo_target(echo), WORKLOAD, load, observer=slow_observer, snapshot_interval_s=0.05)
    assert result.health["bottleneck"] is True
    assert result.health["loop_lag_p99_ms"] > 20
    assert any("client may be the bottleneck" in w for w in result.health["warnings"])
    assert "warning: client may be the bottleneck" in format_table(result)


async def test_open_loop_cap_holds_sends_and_shows_as_schedule_lag(echo: Server) -> None:
    snaps: list[Snapshot] = []
    load = LoadSpec(rate=100, arrival="constant", num_requests=60, max_concurrency=2)
    result = await run_load(echo_target(echo), WORKLOAD, load, observer=snaps.append, snapshot_interval_s=0.05)
    assert max(s.in_flight for s in snaps) <= 2
    s = result.summary
    assert s["completed"] == 60 and s["max_concurrency"] == 2
    # 2 slots of ~128 ms each cannot keep up with 100 req/s: sends fall far behind their schedule.
    assert s["p99_schedule_lag_ms"] > 500
    assert s["mean_e2el_from_schedule_ms"] > s["mean_e2el_ms"] + 200


async def test_a_killed_worker_loses_only_its_unreported_requests(echo: Server, tmp_path: Path) -> None:
    import multiprocessing
    import os
    import signal

    killed: list[int] = []

    def observer(snap: Snapshot) -> None:
        # Once both workers have reported completions, kill worker 1 outright (no chance to send its result).
        if not killed and snap.requests_completed >= 16:
            for proc in multiprocessing.active_children():
                if proc.name == "hpload-loadgen-1" and proc.pid:
                    os.kill(proc.pid, signal.SIGKILL)
                    killed.append(proc.pid)

    load = LoadSpec(concurrency=4, duration_s=3.0, workers=2)
    result = await run_load(echo_target(echo), WORKLOAD, load, observer=observer, snapshot_interval_s=0.1,
                            requests_path=tmp_path / "req.jsonl")  # fmt: skip
    assert killed
    assert any("worker 1 exited" in w for w in result.warnings), result.warnings
    worker0 = len((tmp_path / "req.w0.jsonl").read_text().splitlines())
    # Worker 0 finished normally; what worker 1 reported before it died is still in the merged result.
    assert result.summary["completed"] > worker0 > 0
    assert result.histograms["ttft"].count == result.summary["completed"]


async def test_timed_warmup_does_not_eat_the_measured_requests(echo: Server) -> None:
    load = LoadSpec(concurrency=2, num_requests=6, warmup_s=0.3)
    result = await run_load(echo_target(echo), WORKLOAD, load)
    assert result.summary["completed"] == 6  # num_requests counts measured requests, after the timed warm-up
    assert result.counters["warmup"] >= 1
