"""The foundation: CLI start-up, one-line errors, and the locally made models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hpload import model


def _hpload(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hpload", *args], capture_output=True, text=True, timeout=120)


def test_help_imports_no_heavy_library() -> None:
    probe = (
        "import sys, contextlib, io\n"
        "from hpload.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['--help'])\n"
        "heavy = [m for m in ('torch', 'transformers', 'vllm', 'textual', 'matplotlib', 'optuna') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_help_lists_every_command() -> None:
    result = _hpload("--help")
    assert result.returncode == 0
    for command in ("run", "tui", "serve", "tune", "compare", "report", "model"):
        assert f"  {command} " in result.stdout


@pytest.mark.parametrize("argv", [["frobnicate"], ["model", "like", "--no-such-flag"], ["model", "bogus"]])
def test_bad_command_line_is_one_line_exit_2(argv: list[str]) -> None:
    result = _hpload(*argv)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_preset_names_the_fix(tmp_path: Path) -> None:
    result = _hpload("model", "like", "llama-nope", str(tmp_path / "x"))
    assert result.returncode == 2
    assert "llama-nope" in result.stderr and "--list" in result.stderr


def test_tiny_model_generates_with_transformers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = model.build_tiny(tmp_path / "tiny")
    config = json.loads((path / "config.json").read_text())
    assert config["head_dim"] == 64  # vLLM's CPU attention rejects head sizes below 32
    tok = AutoTokenizer.from_pretrained(path)
    text = "def add(a, b):\n    return a + b"
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text  # byte-level BPE must keep spaces and newlines intact
    assert "<|assistant|>" in tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                                       add_generation_prompt=True)
    lm = AutoModelForCausalLM.from_pretrained(path)
    out = lm.generate(torch.tensor([ids]), max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert out.shape[1] == len(ids) + 6


def test_same_seed_same_weights(tmp_path: Path) -> None:
    a = model.build_tiny(tmp_path / "a", seed=3)
    b = model.build_tiny(tmp_path / "b", seed=3)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()


@pytest.mark.parametrize("preset", sorted(model.list_presets()))
def test_like_preset_builds_a_real_architecture(preset: str, tmp_path: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    out = model.build_like(preset, tmp_path / preset)
    config = AutoConfig.from_pretrained(out)
    spec = model.list_presets()[preset]
    assert config.hidden_size == spec["hidden_size"] and config.num_hidden_layers == spec["num_hidden_layers"]
    with torch.device("meta"):  # shapes only: an 8B model's weights would not fit this machine's test budget
        lm = AutoModelForCausalLM.from_config(config)
    params = sum(p.numel() for p in lm.parameters())
    stated = float(spec["description"].split("(")[1].split("B")[0]) * 1e9
    assert abs(params - stated) / stated < 0.05
