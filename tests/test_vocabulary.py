"""Every key a real run writes into its result file is in the one result vocabulary (hpload.loadgen.vocabulary),
and the SLO evaluator that thresholds, goodput, tuning and the TUI share judges a real result."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpload.loadgen import SLO, LoadSpec, RunResult, Target, WorkloadSpec, run_load
from hpload.loadgen.slo import evaluate, slo_constraints, violations
from hpload.loadgen.vocabulary import HEALTH_KEYS, RESULT_KEYS, SUMMARY_KEYS, TokenCheck, merge_counters
from hpload.servers import EchoSettings, Server, make_server


@pytest.fixture(scope="module")
def echo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    import asyncio

    server = make_server(EchoSettings(ttft_ms=5, itl_ms=2, output_tokens=6), workdir=tmp_path_factory.mktemp("echo"))
    asyncio.run(server.__aenter__())
    try:
        yield server
    finally:
        asyncio.run(server.stop())


@pytest.mark.parametrize("load", [LoadSpec(concurrency=2, num_requests=8),
                                  LoadSpec(rate=30, arrival="poisson", duration_s=0.6, seed=1),
                                  LoadSpec(concurrency=2, num_requests=10, workers=2)])
async def test_every_key_a_run_writes_is_in_the_vocabulary(echo: Server, tmp_path: Path, load: LoadSpec) -> None:
    result = await run_load(Target(echo.base_url, echo.model), WorkloadSpec(input_len=4, max_tokens=6), load,
                            slo=SLO(ttft_ms=1000))
    written = json.loads(result.save(tmp_path / "r.json").read_text())
    assert set(written) <= RESULT_KEYS, set(written) - RESULT_KEYS
    assert set(written["summary"]) <= SUMMARY_KEYS, set(written["summary"]) - SUMMARY_KEYS
    assert set(written["token_check"]) == set(TokenCheck.__annotations__)
    assert set(written["health"]) <= HEALTH_KEYS, set(written["health"]) - HEALTH_KEYS
    assert written["summary"]["completed"] > 0 and written["summary"]["request_goodput"] > 0
    # The summary is derived, never stored: a reloaded file gives the same one.
    assert RunResult.load(tmp_path / "r.json").summary == result.summary


def test_one_evaluator_gives_lines_and_constraints_that_agree() -> None:
    summary = {"completed": 90, "failed": 10, "p99_ttft_ms": 600.0, "median_tpot_ms": 5.0, "request_goodput": 1.0}
    slo = SLO(ttft_p99_ms=500, tpot_p50_ms=10, max_error_rate=0.05, min_goodput=2)
    lines = violations(slo, summary)
    assert lines == ["ttft_p99_ms 600.0 > 500", "max_error_rate 0.100 > 0.05", "min_goodput 1.00 < 2"]
    constraints = slo_constraints(slo, summary)
    assert {name for name, excess in constraints.items() if excess > 0} == {c.name for c in evaluate(slo, summary)
                                                                            if not c.ok}
    assert constraints["ttft_p99_ms"] == pytest.approx(0.2) and constraints["tpot_p50_ms"] < 0
    assert violations(SLO(), {"completed": 0, "failed": 3}) == ["completed 0: no request succeeded"]


def test_counters_merge_by_one_rule() -> None:
    into: dict[str, float] = {"completed": 2, "first_send_ns": 50, "last_done_ns": 90}
    merge_counters(into, {"completed": 3, "first_send_ns": 40, "last_done_ns": 80})
    assert into == {"completed": 5, "first_send_ns": 40, "last_done_ns": 90}
