"""``--shard`` parsing, the start instant, and a closed loop split over 3 shards on loopback: the merged result holds
exactly the single-host run's requests (ids), and the shards' shares are disjoint."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hpload.errors import HploadError
from hpload.scenarios.shards import parse_shard, parse_start_at, scenario_hash

HPLOAD = str(Path(sys.executable).with_name("hpload"))


def test_parse_shard() -> None:
    assert parse_shard("2/3", None) == (2, 3)
    assert parse_shard("auto", 4, {"JOB_COMPLETION_INDEX": "3"}) == (3, 4)
    for bad, shards, env, needle in [
        ("3/3", None, {}, "index must be 0..2"),
        ("1of3", None, {}, "not I/N"),
        ("auto", None, {"JOB_COMPLETION_INDEX": "0"}, "needs --shards"),
        ("auto", 2, {}, "JOB_COMPLETION_INDEX is not set"),
        ("auto", 2, {"JOB_COMPLETION_INDEX": "x"}, "not a number"),
        ("1/3", 4, {}, "disagrees"),
    ]:
        with pytest.raises(HploadError, match=needle):
            parse_shard(bad, shards, env)


def test_parse_start_at(tmp_path: Path) -> None:
    assert parse_start_at("1796410932.5") == 1796410932.5
    assert parse_start_at("2026-12-04T20:00:00Z") == parse_start_at("2026-12-04T20:00:00") == 1796414400.0
    assert parse_start_at("2026-12-04T21:00:00+01:00") == 1796414400.0
    with pytest.raises(HploadError, match="--start-at"):
        parse_start_at("tomorrow")
    barrier = tmp_path / "go"
    threading.Timer(0.3, lambda: barrier.write_text("1796414400\n")).start()
    t0 = time.monotonic()
    assert parse_start_at(f"file:{barrier}") == 1796414400.0  # waited for the launcher to write it
    assert time.monotonic() - t0 >= 0.25


def test_start_at_from_a_barrier_url() -> None:
    import http.server

    released = threading.Event()
    hits: list[int] = []

    class Barrier(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            hits.append(1)
            body = b"2026-12-04T20:00:00Z" if released.is_set() else b""
            self.send_response(200 if body else 425)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Barrier)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        threading.Timer(0.6, released.set).start()
        assert parse_start_at(f"http://127.0.0.1:{server.server_address[1]}/go") == 1796414400.0
        assert len(hits) >= 2  # it asked before the release and kept asking
    finally:
        server.shutdown()


def test_shares_split_request_numbers_exactly() -> None:
    from hpload.loadgen.loadrun import Share

    for n in (1, 2, 3, 5):
        for lo, hi in ((0, 0), (0, 2), (2, 33), (7, 8), (0, 1000)):
            mine = [[g for g in range(lo, hi) if g % n == i] for i in range(n)]
            assert [Share(i, n).count_in(lo, hi) for i in range(n)] == [len(m) for m in mine]


def test_scenario_hash_ignores_where_results_go() -> None:
    a = {"name": "x", "load": {"rate": 5}, "results_dir": "/a", "save_requests": True}
    assert scenario_hash(a) == scenario_hash({**a, "results_dir": "/b", "save_requests": False})
    assert scenario_hash(a) != scenario_hash({**a, "load": {"rate": 6}})


def test_flags_need_a_shard_and_a_start(tmp_path: Path) -> None:
    for args, needle in [
        (["--start-at", "1"], "only with --shard"),
        (["--shard", "1/2"], "needs --start-at"),
        (["--shard", "0/2", "--start-at", "1", "--run-id", "a b"], "--run-id"),
    ]:
        proc = subprocess.run([HPLOAD, "run", "--server", "echo", *args, "--results", str(tmp_path / "r")],  # noqa: S603
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and needle in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr


def _run(url: str, tmp: Path, shard: str, start_at: float | None, name: str) -> subprocess.Popen[bytes]:
    args = [HPLOAD, "run", "--server", url, "--concurrency", "3", "--num-requests", "31", "--warmup-requests", "2",
            "--max-tokens", "4", "--set", "load.warmup_s=0", "--save-requests", "--quiet", "--shard", shard,
            "--run-id", "closed", "--results", str(tmp / name)]  # fmt: skip
    if start_at is not None:
        args += ["--start-at", f"{start_at:.3f}"]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # noqa: S603


def _ids(results: Path) -> list[str]:
    return [json.loads(line)["request_id"] for f in (results / "points").glob("*.requests*.jsonl")
            for line in f.read_text().splitlines()]


def test_a_closed_loop_over_three_shards_is_the_single_host_load(echo_server: object, tmp_path: Path) -> None:
    url = echo_server.base_url  # type: ignore[attr-defined]
    single = _run(url, tmp_path, "0/1", None, "single")
    assert single.wait(120) == 0, single.stderr.read() if single.stderr else ""
    start_at = time.time() + 8
    procs = [_run(url, tmp_path, f"{i}/3", start_at, f"s{i}") for i in range(3)]
    for p in procs:
        assert p.wait(120) == 0, p.stderr.read() if p.stderr else ""
    merged = subprocess.run([HPLOAD, "merge", *(str(tmp_path / f"s{i}") for i in range(3)),  # noqa: S603
                             "--results", str(tmp_path / "m")], capture_output=True, text=True, timeout=60)
    assert merged.returncode == 0, merged.stderr
    parts = [_ids(tmp_path / f"s{i}") for i in range(3)]
    assert [len(p) for p in parts] == [11, 11, 11]  # request numbers 0..32 (2 warm-up + 31), every third each
    assert sorted(_ids(tmp_path / "m")) == sorted(_ids(tmp_path / "single"))
    assert len(set(_ids(tmp_path / "m"))) == 33
    record = json.loads(next((tmp_path / "m" / "points").glob("*.point.json")).read_text())
    assert record["summary"]["completed"] == 31
    # Every key the shards and the merge write is declared in the one result vocabulary.
    from hpload.loadgen.vocabulary import HEALTH_KEYS, SHARD_ENTRY_KEYS, SHARD_META_KEYS, SHARDS_INFO_KEYS

    for i in range(3):
        assert set(json.loads((tmp_path / f"s{i}" / "shard.json").read_text())) == SHARD_META_KEYS
    info = json.loads((tmp_path / "m" / "shards.json").read_text())
    assert set(info) == SHARDS_INFO_KEYS and [set(e) for e in info["shards"]] == [SHARD_ENTRY_KEYS] * 3
    result = json.loads((tmp_path / "m" / record["result_file"]).read_text())
    assert {"shards", "flagged"} <= set(result["health"]) <= HEALTH_KEYS, set(result["health"]) - HEALTH_KEYS
    assert all(set(e["health"]) <= HEALTH_KEYS and "start_late_s" in e["health"] for e in result["health"]["shards"])


async def test_echo_binds_beyond_loopback_only_with_allow_remote(tmp_path: Path) -> None:
    """The one exception to loopback-only (the netns test's server): a setting, so scenario files, ``hpload serve
    echo --allow-remote`` and the launcher's child command line all carry it."""
    import httpx

    from hpload.errors import ServerError
    from hpload.servers import EchoSettings, make_server

    # 127.0.0.2 is not one of the loopback names the echo server accepts, yet reachable here without a network.
    with pytest.raises(ServerError, match="binds loopback only"):
        async with make_server(EchoSettings(host="127.0.0.2", startup_timeout_s=20), workdir=tmp_path):
            pass
    async with make_server(EchoSettings(host="127.0.0.2", allow_remote=True), workdir=tmp_path) as server:
        assert server.base_url.startswith("http://127.0.0.2:")
        async with httpx.AsyncClient(trust_env=False) as client:
            assert (await client.get(f"{server.base_url}/v1/models")).status_code == 200


def test_serve_echo_has_allow_remote() -> None:
    proc = subprocess.run([HPLOAD, "serve", "echo", "--help"], capture_output=True, text=True, timeout=60)  # noqa: S603
    assert "--allow-remote" in proc.stdout
