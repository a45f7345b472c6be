"""Fault matrix: bad scenario files. Hypothesis mutates a valid scenario (unknown keys, wrong types, values out of
range, missing required fields, broken TOML) and `hpload run` must answer every one with one line per problem that
names the field (or the line, for TOML syntax) and exit 2: never a traceback, never a started server.

The CLI's error path runs in-process for speed (hundreds of files); a few run as real subprocesses too.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpload.cli import main

BASE: dict[str, Any] = {
    "name": "fuzz",
    "description": "a valid scenario that the fuzzer breaks in one place",
    "repeats": 1,
    "seed": 0,
    "servers": [{"kind": "echo", "label": "echo", "ttft_ms": 1.0, "itl_ms": 1.0, "output_tokens": 4}],
    "workload": {"source": "synthetic", "endpoint": "completions", "input_len": 4, "max_tokens": 4,
                 "temperature": 0.0, "stream": True, "seed": 0},
    "load": {"concurrency": 2, "num_requests": 4, "warmup_requests": 0, "connect_timeout_s": 5.0},
    "slo": {"ttft_ms": 1000.0, "tpot_ms": 100.0},
    "sweep": {"load": {"concurrency": [1, 2]}},
}  # fmt: skip

# (path into BASE, kind of value the schema wants)
FIELDS: list[tuple[tuple[str | int, ...], str]] = [
    (("name",), "name"),
    (("repeats",), "posint"),
    (("seed",), "int"),
    (("servers", 0, "label"), "str"),
    (("servers", 0, "ttft_ms"), "float"),
    (("servers", 0, "itl_ms"), "float"),
    (("servers", 0, "output_tokens"), "posint"),
    (("workload", "source"), "literal"),
    (("workload", "endpoint"), "literal"),
    (("workload", "input_len"), "posint"),
    (("workload", "max_tokens"), "posint"),
    (("workload", "temperature"), "float"),
    (("workload", "stream"), "bool"),
    (("load", "concurrency"), "posint"),
    (("load", "num_requests"), "posint"),
    (("load", "warmup_requests"), "int"),
    (("load", "connect_timeout_s"), "float"),
    (("slo", "ttft_ms"), "float"),
    (("slo", "tpot_ms"), "float"),
    (("sweep", "load", "concurrency"), "list"),
]
TABLES: list[tuple[str | int, ...]] = [(), ("servers", 0), ("workload",), ("load",), ("slo",), ("sweep",)]
REQUIRED = ["name", "servers", "load"]


def shown(path: tuple[str | int, ...]) -> str:
    """A field path as the error line writes it: servers[0].ttft_ms, load.concurrency."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


# ---------------------------------------------------------------- a small TOML writer for these shapes


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # a JSON string is a TOML basic string (no surrogate escapes)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(v)


def dump_toml(data: dict[str, Any]) -> str:
    lines: list[str] = []
    tables: list[tuple[str, Any]] = []
    for key, value in data.items():
        if isinstance(value, dict) or (isinstance(value, list) and value and all(isinstance(x, dict) for x in value)):
            tables.append((key, value))
        else:
            lines.append(f"{json.dumps(key)} = {toml_value(value)}")

    def table(prefix: str, body: dict[str, Any], array: bool = False) -> None:
        lines.append(f"[[{prefix}]]" if array else f"[{prefix}]")
        subs = []
        for key, value in body.items():
            if isinstance(value, dict) and key in ("load", "workload", "server", "servers") and prefix == "sweep":
                subs.append((key, value))
            else:
                lines.append(f"{json.dumps(key)} = {toml_value(value)}")
        for key, value in subs:
            table(f"{prefix}.{key}", value)

    for key, value in tables:
        if isinstance(value, list):
            for item in value:
                table(key, item, array=True)
        else:
            table(key, value)
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- mutations


def wrong_value(kind: str) -> st.SearchStrategy[Any]:
    """Values the field's type rejects even in pydantic's lax mode (so '16' for an int is not among them)."""
    containers = st.one_of(st.lists(st.integers(), min_size=1, max_size=3), st.just({"a": 1}))
    words = st.from_regex(r"[a-z]{3,10}xq", fullmatch=True)  # never a number, a bool word or a literal's value
    if kind == "posint":
        return st.one_of(containers, words, st.integers(max_value=0), st.just(1.5))
    if kind == "int":
        return st.one_of(containers, words, st.just(2.5))
    if kind == "float":
        return st.one_of(containers, words, st.floats(max_value=-0.001, allow_nan=False, allow_infinity=False))
    if kind == "bool":
        return st.one_of(containers, words)
    if kind == "literal":
        return st.one_of(containers, words, st.integers())
    if kind == "name":
        return st.one_of(containers, st.just("has space"), st.just("slash/name"), st.just(""))
    if kind == "list":
        return st.one_of(words, st.just({"a": 1}), st.just([]))
    return containers  # str


@st.composite
def broken_scenario(draw: st.DrawFn) -> tuple[str, list[str]]:
    """(TOML text, strings the error output must contain)."""
    data = copy.deepcopy(BASE)
    how = draw(st.sampled_from(["unknown", "wrong_type", "missing", "bad_toml"]))
    if how == "unknown":
        where = draw(st.sampled_from(TABLES))
        node: Any = data
        for part in where:
            node = node[part]
        key = draw(st.from_regex(r"[a-z][a-z_]{2,10}zq", fullmatch=True))  # never a real field name
        printable = st.characters(codec="utf-8", exclude_categories=["Cc", "Cs"])  # TOML strings forbid control chars
        node[key] = draw(st.one_of(st.integers(), st.text(printable, max_size=5), st.booleans()))
        return dump_toml(data), [shown((*where, key)), "unknown key"]
    if how == "wrong_type":
        path, kind = draw(st.sampled_from(FIELDS))
        node = data
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = draw(wrong_value(kind))
        # Zero-length sweep lists are caught by a cross-field check that names the setting, not the full path.
        expect = path[-1] if kind == "list" else shown(path)
        return dump_toml(data), [str(expect)]
    if how == "missing":
        key = draw(st.sampled_from(REQUIRED))
        del data[key]
        return dump_toml(data), [key]
    text = dump_toml(data)
    lines = text.splitlines()
    at = draw(st.integers(0, len(lines) - 1))
    junk = draw(st.sampled_from(["= 1", "[unclosed", "key = ", "a = [1, 2", "x = 'y", "[[", "b = 1 2"]))
    lines.insert(at, junk)
    # The parser may notice an unclosed array on the line after the junk, and an unclosed string only at the end.
    return "\n".join(lines) + "\n", ["TOML syntax", f"re:(:({at + 1}|{at + 2}): TOML syntax|at end of document)"]


def run_cli(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = main(argv)
        except SystemExit as exit_:
            rc = int(exit_.code or 0)
    return rc, err.getvalue()


def assert_one_line_errors(rc: int, err: str, expect: list[str], text: str) -> None:
    context = f"\n--- file ---\n{text}\n--- stderr ---\n{err}"
    assert rc == 2, f"exit {rc}" + context
    assert "Traceback" not in err, context
    lines = err.strip().splitlines()
    assert lines, context
    assert all(line.startswith("hpload run: error: ") for line in lines), context
    for needle in expect:
        found = re.search(needle[3:], err) if needle.startswith("re:") else needle in err
        assert found, f"{needle!r} not named" + context


def test_the_base_scenario_is_valid() -> None:
    from hpload.scenarios.loader import load_text

    assert load_text(dump_toml(BASE), "base.toml").load.concurrency == 2  # the fuzzer breaks a valid file


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=broken_scenario())
def test_every_broken_scenario_gives_one_line_naming_the_field(case: tuple[str, list[str]], tmp_path: Path) -> None:
    text, expect = case
    path = tmp_path / "broken.toml"
    path.write_text(text)
    rc, err = run_cli(["run", str(path), "--results", str(tmp_path / "results")])
    assert_one_line_errors(rc, err, expect, text)
    assert not (tmp_path / "results" / "points").exists(), "nothing may run or be written for a bad file"


@given(field=st.sampled_from([f for f in FIELDS if f[1] in ("posint", "float", "bool")]), data=st.data())
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_bad_set_overrides_name_the_field(field: tuple[tuple[str | int, ...], str], data: st.DataObject,
                                          tmp_path: Path) -> None:  # fmt: skip
    path, kind = field
    good = tmp_path / "good.toml"
    good.write_text(dump_toml(BASE))
    value = data.draw(st.sampled_from(["[1, 2]", "{a = 1}", "abcxq"]))
    dotted = ".".join("echo" if isinstance(p, int) else p for p in path)  # --set picks servers by label
    rc, err = run_cli(["run", str(good), "--results", str(tmp_path / "r"), "--set", f"{dotted}={value}"])
    assert_one_line_errors(rc, err, [shown(path)], f"--set {dotted}={value}")


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda d: d["load"].update(concurrencyy=4), "load.concurrencyy"),
        (lambda d: d["servers"][0].update(itl_ms=[1]), "servers[0].itl_ms"),
        (lambda d: d.pop("load"), "load"),
        (None, "TOML syntax"),
    ],
    ids=["unknown-key", "wrong-type", "missing", "bad-toml"],
)
def test_bad_scenarios_as_subprocesses(edit: Any, needle: str, tmp_path: Path) -> None:
    data = copy.deepcopy(BASE)
    if edit is not None:
        edit(data)
        text = dump_toml(data)
    else:
        text = dump_toml(data).replace("[load]", "[load")
    path = tmp_path / "bad.toml"
    path.write_text(text)
    proc = subprocess.run([sys.executable, "-m", "hpload", "run", str(path), "--results", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert_one_line_errors(proc.returncode, proc.stderr, [needle], text)
    assert proc.stdout == ""
