"""The source tree has the installed package's shape: hpload/<folder> links to each top-level product folder, so
static tools resolve `hpload.*` by path, and the wheel installs exactly those modules."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("loadgen", "servers", "scenarios", "tui")


def _source_modules() -> set[str]:
    """Every module a static tool sees under hpload/, following the folder links, as dotted names."""
    found = set()
    for folder, _dirs, files in os.walk(ROOT / "hpload", followlinks=True):  # Path.rglob follows no links on 3.11
        for name in files:
            if name.endswith(".py"):
                rel = (Path(folder) / name).relative_to(ROOT).with_suffix("")
                found.add(".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts))
    return found


def test_each_product_folder_is_reachable_as_hpload_subpackage() -> None:
    for folder in FOLDERS:
        link = ROOT / "hpload" / folder
        assert link.is_symlink(), f"hpload/{folder} must be a link to ../{folder}"
        assert os.readlink(link) == f"../{folder}"  # relative, so a clone anywhere works
        assert link.resolve() == (ROOT / folder).resolve()
        assert (link / "__init__.py").is_file()
    assert {"hpload.loadgen.loadrun", "hpload.servers.base", "hpload.scenarios.runner", "hpload.tui.app"} <= (
        _source_modules()
    )


def test_wheel_installs_every_source_module_and_they_import(tmp_path: Path) -> None:
    out = tmp_path / "wheel"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q", "-w", str(out)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = out.glob("hpload-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    wheel_modules = {
        n.removesuffix("/__init__.py").removesuffix(".py").replace("/", ".") for n in names if n.endswith(".py")
    }
    assert wheel_modules == _source_modules()
    assert "hpload/scenarios/quickstart.toml" in names and "hpload/tui/hpload.tcss" in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    # The unpacked wheel first on the path: it wins over this checkout's editable install (a meta-path finder
    # appended after the path finder), so every module below comes from the wheel.
    probe = (
        "import importlib, json, sys\n"
        "files = {}\n"
        "for name in sys.argv[1:]:\n"
        "    files[name] = importlib.import_module(name).__file__\n"
        "print(json.dumps(files))\n"
    )
    importable = sorted(m for m in wheel_modules if not m.endswith("__main__"))
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run([sys.executable, "-c", probe, *importable], capture_output=True, text=True, timeout=300,
                          check=False, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    files = json.loads(done.stdout.strip().splitlines()[-1])
    assert all(str(f).startswith(str(site)) for f in files.values()), files
