"""The engine is usable without the TUI: loadgen, servers and scenarios never pull Textual in.

Each check runs in a fresh interpreter, because this test process may already hold Textual from other tests.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

_PROBE = r"""
import importlib, json, pkgutil, sys
packages = sys.argv[1:]
imported = []
for name in packages:
    package = importlib.import_module(name)
    imported.append(name)
    for info in pkgutil.walk_packages(package.__path__, prefix=name + "."):
        importlib.import_module(info.name)
        imported.append(info.name)
print(json.dumps({"imported": imported, "ui": sorted(m for m in sys.modules if m.split(".")[0] in ("textual", "textual_dev"))}))
"""


def _probe(*packages: str) -> dict[str, list[str]]:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, *packages], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, list[str]] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("package", ["hpload.loadgen", "hpload.servers", "hpload.scenarios"])
def test_engine_package_imports_no_textual(package: str) -> None:
    result = _probe(package)
    assert package in result["imported"]
    assert result["ui"] == [], f"{package} imported {result['ui'][:5]}"


def test_tui_command_module_and_helpers_import_no_textual() -> None:
    # `hpload tui --help` builds its parser from hpload.tui.cli: it must stay instant.
    code = (
        "import sys, hpload.tui.cli, hpload.tui.child, hpload.tui.logaxis, hpload.tui.plans;"
        "print(sorted(m for m in sys.modules if m.startswith('textual')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_probe_detects_textual() -> None:
    # The probe itself must be able to fail: importing the app does pull Textual in.
    result = _probe("hpload.tui")
    assert "hpload.tui.app" in result["imported"]
    assert "textual" in result["ui"]
