"""Shaped workloads without a server: trace files of each format read into exact-length token-id requests, equal
hash_ids give equal prefixes, bad rows name file/line/field, replay schedules, length distributions, shared-prefix
groups. The servers' side of it is in test_workloads_servers.py."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from hpload.errors import HploadError
from hpload.loadgen.lengths import LengthDist, summarize
from hpload.loadgen.replay import ks_statistic, send_summary
from hpload.loadgen.specs import LoadSpec, Target, WorkloadSpec
from hpload.loadgen.traces import detect_format, read_trace, replay_schedule
from hpload.loadgen.workload import build_requests

# (t_s, input, output, hash_ids) rows, deliberately unsorted with a duplicate time, written in every format.
ROWS = [(0.0, 40, 5, [1, 2]), (0.5, 30, 3, [1, 3]), (0.25, 20, 4, [7]), (0.25, 24, 2, [7, 8])]


def write_trace(tmp: Path, fmt: str, rows: list[tuple[float, int, int, list[int]]] = ROWS) -> Path:
    if fmt == "mooncake":
        path = tmp / "t.mooncake.jsonl"
        path.write_text("".join(json.dumps({"timestamp": int(t * 1000), "input_length": i, "output_length": o,
                                            "hash_ids": h}) + "\n" for t, i, o, h in rows))  # fmt: skip
    elif fmt == "hpload":
        path = tmp / "t.hpload.jsonl"
        path.write_text("".join(json.dumps({"t_s": t, "input_len": i, "output_len": o}) + "\n" for t, i, o, _ in rows))
    elif fmt == "azure":
        path = tmp / "t.azure.csv"
        lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
        for t, i, o, _ in rows:
            lines.append(f"2023-11-16 18:15:{46 + t:010.7f},{i},{o}")  # seven fractional digits, as the trace
        path.write_text("\n".join(lines) + "\n")
    else:
        path = tmp / "t.burstgpt.csv"
        lines = ["Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type"]
        lines += [f"{100 + t},ChatGPT,{i},{o},{i + o},Conversation log" for t, i, o, _ in rows]
        path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def target(tiny_model: Path) -> Target:
    return Target("http://127.0.0.1:9", "m", tokenizer_path=str(tiny_model))


@pytest.mark.parametrize("fmt", ["mooncake", "hpload", "azure", "burstgpt"])
def test_each_format_reads_sorted_exact_lengths(tmp_path: Path, target: Target, fmt: str) -> None:
    path = write_trace(tmp_path, fmt)
    assert detect_format(path) == fmt
    spec = WorkloadSpec(source="trace", path=str(path), max_context=512, block_tokens=16)
    reqs = build_requests(spec, target)
    want = sorted(ROWS, key=lambda r: r[0])  # stable: the two rows at 0.25 s keep the file's order
    assert [r.at_s for r in reqs] == pytest.approx([r[0] for r in want], abs=1e-6)
    for req, (_, n_in, n_out, _) in zip(reqs, want, strict=True):
        body = json.loads(req.body)
        assert len(body["prompt"]) == n_in == req.expected_in  # token ids: exactly the trace's length
        assert body["max_tokens"] == n_out and body["ignore_eos"] is True
    assert reqs.stats["format"] == fmt


def test_equal_hash_ids_give_equal_prefixes(tmp_path: Path, target: Target) -> None:
    rows = [(0.0, 40, 2, [1, 2, 3]), (0.1, 48, 2, [1, 2, 4]), (0.2, 40, 2, [5, 2, 3]), (0.3, 16, 2, [1])]
    spec = WorkloadSpec(source="trace", path=str(write_trace(tmp_path, "mooncake", rows)), block_tokens=16,
                        max_context=512)  # fmt: skip
    p = [json.loads(r.body)["prompt"] for r in build_requests(spec, target)]
    assert p[0][:32] == p[1][:32] and p[0][32:40] != p[1][32:40]  # blocks 1, 2 shared; 3 vs 4 differ
    assert p[2][:16] != p[0][:16] and p[2][16:40] == p[0][16:40]  # same blocks at the same place are equal
    assert p[3] == p[0][:16]
    # A rerun with the same seed builds the same tokens; another seed builds others.
    assert [json.loads(r.body)["prompt"] for r in build_requests(spec, target)] == p
    other = build_requests(spec.model_copy(update={"seed": 1}), target)
    assert json.loads(other[0].body)["prompt"] != p[0]


@pytest.mark.parametrize(
    ("fmt", "text", "field"),
    [
        ("mooncake", '{"timestamp": 0, "input_length": 4, "output_length": 2}\n{"timestamp": 5, "input_length": "x",'
                     ' "output_length": 2}\n', "input_length"),
        ("mooncake", '{"timestamp": 0, "input_length": 4, "output_length": 2}\n{"timestamp": 1\n', "(line)"),
        ("mooncake", '{"timestamp": 0, "input_length": 4, "output_length": 2, "hash_ids": ["a"]}\n', "hash_ids"),
        ("hpload", '{"t_s": 0, "input_len": 4, "output_len": 2}\n{"t_s": -1, "input_len": 4, "output_len": 2}\n',
         "t_s"),
        ("azure", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.1,4,2\nyesterday,4,2\n", "TIMESTAMP"),
        ("burstgpt", "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n1,m,4,2,6,x\n2,m,,2,2,x\n",
         "Request tokens"),
    ],
)  # fmt: skip
def test_malformed_line_names_file_line_and_field(tmp_path: Path, fmt: str, text: str, field: str) -> None:
    path = tmp_path / f"bad.{fmt}"
    path.write_text(text)
    with pytest.raises(HploadError) as err:
        read_trace(str(path), fmt)
    msg = str(err.value)
    line = 3 if fmt in ("azure", "burstgpt") else (1 if "hash_ids" in text else 2)
    assert str(path) in msg and f"line {line}" in msg and f"'{field}'" in msg and "fix:" in msg, msg


def test_too_long_rows_are_counted_or_clipped(tmp_path: Path, target: Target) -> None:
    rows = [(0.0, 100, 10, []), (0.1, 600, 10, []), (0.2, 500, 20, [])]
    spec = WorkloadSpec(source="trace", path=str(write_trace(tmp_path, "hpload", rows)), max_context=512)
    counted = build_requests(spec, target)
    assert len(counted) == 1 and counted.stats["skipped"] == {"too_long": 2} and "not sent" in counted.warnings[0]
    clipped = build_requests(spec.model_copy(update={"too_long": "clip"}), target)
    assert len(clipped) == 3 and clipped.stats["clipped"] == 2
    assert all((r.input_len or 0) + (r.output_len or 0) <= 512 for r in clipped)
    burst = tmp_path / "zero.csv"
    burst.write_text("Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n0,m,4,0,4,x\n1,m,4,2,6,x\n")
    reqs = build_requests(WorkloadSpec(source="trace", path=str(burst), max_context=512), target)
    assert len(reqs) == 1 and reqs.stats["skipped"] == {"zero_output": 1}  # failed requests in BurstGPT's log


def test_window_offset_scale_and_warp(tmp_path: Path, target: Target) -> None:
    rows = [(t / 10, 8, 2, []) for t in range(11)]  # 0.0 .. 1.0 s, 10 req/s
    spec = WorkloadSpec(source="trace", path=str(write_trace(tmp_path, "hpload", rows)), max_context=512)
    reqs = build_requests(spec.model_copy(update={"trace_offset_s": 0.3, "trace_window_s": 0.5}), target)
    assert [r.at_s for r in reqs] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])  # 0.3..0.7 s, shifted to 0
    reqs = build_requests(spec, target)
    offsets, warm = replay_schedule(reqs, LoadSpec(replay=True, time_scale=2.0))
    assert offsets[-1] == pytest.approx(2e9) and warm == 0
    offsets, _ = replay_schedule(reqs, LoadSpec(replay=True, rate=50.0))
    assert (len(offsets) - 1) / (offsets[-1] / 1e9) == pytest.approx(50.0)
    offsets, warm = replay_schedule(reqs, LoadSpec(replay=True, warmup_requests=2, num_requests=3))
    assert len(offsets) == 5 and warm == 2
    with pytest.raises(HploadError, match="trace_offset_s"):
        build_requests(spec.model_copy(update={"trace_offset_s": 5.0}), target)
    with pytest.raises(HploadError, match="load.replay"):
        replay_schedule(build_requests(WorkloadSpec(num_prompts=2), target), LoadSpec(replay=True))
    with pytest.raises(ValueError, match="replay"):
        LoadSpec(replay=True, concurrency=2)


def test_length_distributions() -> None:
    rng = random.Random(0)
    n = 20000
    for dist in (LengthDist(kind="normal", mean=200, std=40), LengthDist(kind="lognormal", mean=200, std=80)):
        got = summarize(dist.draw(rng, n))
        assert got["mean"] == pytest.approx(200, rel=0.03) and got["std"] == pytest.approx(dist.std, rel=0.06)
    uni = LengthDist(kind="uniform", min=10, max=20).draw(rng, n)
    assert min(uni) == 10 and max(uni) == 20
    assert set(LengthDist(kind="fixed", mean=7).draw(rng, 5)) == {7}
    clipped = LengthDist(kind="normal", mean=10, std=50, min=3, max=30).draw(rng, n)
    assert min(clipped) == 3 and max(clipped) == 30
    s = summarize(uni)
    assert sum(s["counts"]) == n and len(s["edges"]) == len(s["counts"]) + 1


def test_empirical_lengths_and_bad_file(tmp_path: Path, target: Target) -> None:
    path = tmp_path / "lens.txt"
    path.write_text("# lengths\n16\n32\n\n64\n")
    spec = WorkloadSpec(num_prompts=50, input_dist=LengthDist(kind="empirical", path=str(path)),
                        output_dist=LengthDist(kind="uniform", min=2, max=4))  # fmt: skip
    reqs = build_requests(spec, target)
    # Synthetic prompts stay text (the server tokenizes them, as in production): the measured count is the drawn
    # length plus the BOS and a token or two of the decode/re-encode round trip.
    drawn = {16, 32, 64}
    near = [min(drawn, key=lambda n: abs(n - (r.expected_in or 0))) for r in reqs]
    assert set(near) == drawn and all(0 <= (r.expected_in or 0) - n <= 3 for r, n in zip(reqs, near, strict=True))
    assert {json.loads(r.body)["max_tokens"] for r in reqs} == {2, 3, 4}
    path.write_text("16\nlots\n")
    with pytest.raises(HploadError, match=r"line 2.*not a length"):
        build_requests(spec, target)


def test_shared_prefix_groups(target: Target) -> None:
    spec = WorkloadSpec(source="shared_prefix", prefix_groups=3, prefix_len=32, suffix_len=8, num_prompts=9)
    p = [json.loads(r.body)["prompt"] for r in build_requests(spec, target)]
    assert all(len(x) == 40 for x in p)
    for i in range(9):
        assert p[i][:32] == p[i % 3][:32]  # request i is in group i % G
    assert len({tuple(x[:32]) for x in p}) == 3 and len({tuple(x[32:]) for x in p}) == 9
    assert build_requests(spec, target).stats["ideal_hit_fraction"] == pytest.approx(6 * 32 / (9 * 40))


def test_send_summary_and_ks() -> None:
    sched = [i * 10_000_000 for i in range(100)]
    on_time = send_summary([(s, s + 50_000) for s in sched])
    assert on_time["requested_rate"] == pytest.approx(100.0) and on_time["achieved_rate"] == pytest.approx(100.0)
    assert on_time["schedule_delay_ms"]["p99"] == pytest.approx(0.05) and on_time["interarrival_ks"] == 0.0
    late = send_summary([(s, max(s, 500_000_000)) for s in sched])  # stuck until 0.5 s, then caught up in a burst
    assert late["interarrival_ks"] > 0.4 and late["schedule_delay_ms"]["max"] == pytest.approx(500.0)
    assert ks_statistic([1, 2, 3], [10, 20, 30]) == 1.0


def test_cached_tokens_from_usage_reach_the_prefix_cache_stats() -> None:
    from hpload.loadgen.client import RequestRecord, _read_whole
    from hpload.loadgen.recorder import Recorder
    from hpload.loadgen.replay import attach

    recorder = Recorder("x")
    for cached in (0, 96, 128):
        rec = RequestRecord(0, False)
        rec.send_ns, rec.reply = 1, []
        body = {
            "choices": [{"message": {"content": "hi"}}],
            "usage": {"prompt_tokens": 160, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": cached}},
        }
        _read_whole(json.dumps(body).encode(), rec)
        rec.first_ns = rec.last_ns = rec.done_ns = 2
        assert rec.cached_in == cached and rec.reply == ["hi"]
        recorder.record(rec)
    result = recorder.result({}, "")
    attach(result, [], None)
    pc = result.config["workload_stats"]["prefix_cache"]
    assert pc == {"cached_tokens": 224, "prompt_tokens": 480, "hit_fraction": pytest.approx(224 / 480)}


def test_each_workload_describes_itself_in_one_line() -> None:
    from hpload.loadgen.lengths import LengthDist

    said = {
        "synthetic": WorkloadSpec(input_dist=LengthDist(kind="lognormal", mean=512, std=200, max=2048),
                                  output_dist=LengthDist(kind="uniform", min=128, max=256)).describe(),
        "trace": WorkloadSpec(source="trace", path="/x/a.csv", format="azure", trace_window_s=60).describe(),
        "sessions": WorkloadSpec(source="sessions", session_turns=4, turn_len=32, think_time_s=1).describe(),
        "shared_prefix": WorkloadSpec(source="shared_prefix", prefix_groups=4, prefix_len=256, suffix_len=64,
                                      num_prompts=32).describe(),
    }  # fmt: skip
    assert said["synthetic"] == "input lognormal(mean 512, std 200, 1..2048), output uniform(128..256)"
    assert said["trace"] == "trace a.csv (azure), window 60 s"
    assert said["sessions"] == "sessions 4 turns x 32 tokens, think 1 s, output 128"
    # 28 of 32 requests find their 256-token prefix cached: 28 * 256 / (32 * 320) = 70%.
    assert said["shared_prefix"] == "shared prefix 4 groups x 256 + 64 tokens, output 128 (ideal cache hits 70%)"
    assert all("\n" not in line for line in said.values())
