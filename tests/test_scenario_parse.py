"""Scenario files: strict parsing, errors naming file/line/field, overrides, sweep expansion, shipped scenarios."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpload.errors import HploadError
from hpload.scenarios.loader import ScenarioError, key_lines, load_scenario, load_text, shipped_names
from hpload.scenarios.points import expand

BASE = """\
name = "t"

[[servers]]
kind = "echo"
label = "fast"
itl_ms = 1

[[servers]]
kind = "vllm"
label = "v"
max_num_seqs = 8

[workload]
max_tokens = 16

[load]
concurrency = 2
num_requests = 10
"""


def problems(text: str, overrides: list[str] | None = None) -> list[str]:
    with pytest.raises(ScenarioError) as info:
        load_text(text, "s.toml", overrides)
    return info.value.problems


def test_unknown_key_names_file_line_and_field() -> None:
    text = BASE.replace("max_num_seqs = 8", "max_num_seq = 8")
    (problem,) = problems(text)
    assert problem.startswith("s.toml:11: servers[1].max_num_seq: unknown key")


def test_bad_value_names_its_line() -> None:
    text = BASE.replace("concurrency = 2", "concurrency = 0")
    (problem,) = problems(text)
    assert problem.startswith("s.toml:17: load.concurrency:")
    assert "greater than or equal to 1" in problem


def test_every_problem_is_reported_one_line_each() -> None:
    text = BASE.replace("itl_ms = 1", "itl_ms = -1").replace("max_tokens = 16", "max_token = 16")
    found = problems(text)
    assert len(found) == 2
    assert all("\n" not in p for p in found)
    assert any(p.startswith("s.toml:6: servers[0].itl_ms:") for p in found)
    assert any(p.startswith("s.toml:14: workload.max_token: unknown key") for p in found)


def test_missing_table_points_at_top_level() -> None:
    text = BASE[: BASE.index("[load]")]
    (problem,) = problems(text)
    assert "load: required" in problem


def test_cross_field_error_finds_the_sweep_line() -> None:
    text = BASE + "\n[sweep.server]\nbatch_size = [1, 2]\n"
    (problem,) = problems(text)
    # The echo server has no batch_size: the message says which server and where to move it.
    assert problem.startswith("s.toml:21: sweep.server.batch_size:")
    assert "'fast' has no such setting" in problem


def test_toml_syntax_error_names_the_line() -> None:
    (problem,) = problems(BASE.replace("max_tokens = 16", "max_tokens = = 16"))
    assert problem.startswith("s.toml:14: TOML syntax:")


def test_overrides_are_validated_like_the_file() -> None:
    scenario = load_text(BASE, "s.toml", ["load.concurrency=16", "servers.v.max_num_seqs=64", "workload.ignore_eos=true"])
    assert scenario.load.concurrency == 16
    assert scenario.server("v").max_num_seqs == 64  # type: ignore[union-attr]
    assert scenario.workload.ignore_eos is True
    (problem,) = problems(BASE, ["load.concurency=3"])
    assert "load.concurency: unknown key" in problem
    with pytest.raises(HploadError, match="no server 'nope'"):
        load_text(BASE, "s.toml", ["servers.nope.max_num_seqs=1"])


def test_key_lines_handles_arrays_of_tables_and_subtables() -> None:
    lines = key_lines(BASE + '\n[servers.env]\nX = "1"\n')
    assert lines[("servers", 0, "kind")] == 4
    assert lines[("servers", 1, "max_num_seqs")] == 11
    assert lines[("servers", 1, "env", "X")] == 21


def test_cartesian_and_zip_sweeps_expand_grouped_by_server_settings() -> None:
    text = BASE + "\n[sweep.load]\nconcurrency = [1, 4]\n[sweep.servers.v]\nmax_num_seqs = [8, 16, 32]\n"
    points = expand(load_text(text, "s.toml"))
    assert len(points) == 2 + 3 * 2
    keys = [p.server_key for p in points]
    # Each server setting appears in one contiguous run: a server restarts only when its settings change.
    runs = [k for i, k in enumerate(keys) if i == 0 or keys[i - 1] != k]
    assert len(runs) == len(set(keys)) == 4
    zipped = load_text(text.replace("[sweep.load]", "[sweep]\nmode = \"zip\"\n[sweep.load]").replace(
        "[8, 16, 32]", "[8, 16]"), "s.toml")
    vpoints = [p for p in expand(zipped) if p.label == "v"]
    assert [(p.settings["server.max_num_seqs"], p.settings["load.concurrency"]) for p in vpoints] == [(8, 1), (16, 4)]


def test_zip_with_uneven_lists_is_an_error() -> None:
    text = BASE + "\n[sweep]\nmode = \"zip\"\n[sweep.load]\nconcurrency = [1, 2, 3]\nmax_concurrency = [1]\n"
    (problem,) = problems(text)
    assert "zip" in problem and "[1, 3]" in problem


def test_rate_axis_turns_closed_loop_into_open_loop() -> None:
    points = expand(load_text(BASE + "\n[sweep.load]\nrate = [2.0, 4.0]\n", "s.toml"))
    assert all(p.load.rate in (2.0, 4.0) and p.load.concurrency is None for p in points)


def test_point_ids_are_stable_and_change_with_the_measurement() -> None:
    a = [p.point_id for p in expand(load_text(BASE, "s.toml"))]
    b = [p.point_id for p in expand(load_text(BASE, "s.toml"))]
    c = [p.point_id for p in expand(load_text(BASE, "s.toml", ["load.num_requests=11"]))]
    assert a == b
    assert not set(a) & set(c)


def test_repeats_get_distinct_seeds() -> None:
    points = expand(load_text(BASE.replace('name = "t"', 'name = "t"\nrepeats = 3\nseed = 5'), "s.toml"))
    fast = [p for p in points if p.label == "fast"]
    assert [p.workload.seed for p in fast] == [5, 6, 7]
    assert len({p.point_id for p in fast}) == 3


@pytest.mark.parametrize("name", ["quickstart", "landscape", "online", "slo-tune", "three-servers"])
def test_shipped_scenarios_parse(name: str) -> None:
    assert name in shipped_names()
    loaded = load_scenario(name)
    assert loaded.scenario.name == name
    assert expand(loaded.scenario)


def test_scenario_found_by_path_or_bare_name(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(BASE)
    assert load_scenario(str(path)).scenario.name == "t"
    assert load_scenario("scenarios/quickstart.toml").path.resolve() == load_scenario("quickstart").path.resolve()  # type: ignore[union-attr]
    with pytest.raises(HploadError, match="no such file or shipped scenario"):
        load_scenario(str(tmp_path / "absent.toml"))
