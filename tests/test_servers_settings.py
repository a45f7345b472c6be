"""Bad settings fail before any process starts, naming the field; settings map onto the right command lines."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from pydantic import TypeAdapter, ValidationError

from hpload.servers import HFSettings, ServerSettings, VllmSettings, make_server
from hpload.servers.base import death_cause


def _own_children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def test_unknown_and_mistyped_keys_name_the_field() -> None:
    adapter = TypeAdapter(ServerSettings)
    with pytest.raises(ValidationError) as unknown:
        adapter.validate_python({"kind": "vllm", "max_num_seq": 4})
    assert "max_num_seq" in str(unknown.value)
    with pytest.raises(ValidationError) as mistyped:
        adapter.validate_python({"kind": "hf", "batch_size": "many"})
    assert "batch_size" in str(mistyped.value)


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["vllm", "--max-num-seqs", "0"], "--max-num-seqs"),
        (["hf", "--batch-size", "0"], "--batch-size"),
        (["echo", "--itl-ms", "-1"], "--itl-ms"),
        (["hf", "--dtype", "float33"], "dtype"),
    ],
)
def test_serve_rejects_bad_flags_before_starting_anything(argv: list[str], flag: str) -> None:
    before = _own_children()
    done = subprocess.run([sys.executable, "-m", "hpload", "serve", *argv], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and flag in lines[0] and "Traceback" not in done.stderr
    assert _own_children() <= before


def test_vllm_command_line_follows_settings(tiny_model: Path) -> None:
    settings = VllmSettings(model=str(tiny_model), dtype="float32", max_num_seqs=4, enable_prefix_caching=False,
                            seed=7, extra_args=["--enforce-eager"], api_key="s3cret")
    server = make_server(settings)
    argv = server.argv(12345)  # type: ignore[attr-defined]
    assert argv[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    joined = " ".join(argv)
    for piece in ("--dtype float32", "--max-num-seqs 4", "--no-enable-prefix-caching", "--seed 7", "--port 12345",
                  "--host 127.0.0.1", "--enforce-eager"):
        assert piece in joined
    assert "--max-model-len" not in joined  # unset settings stay vLLM's defaults
    assert "s3cret" not in joined  # the key goes by environment, never argv
    assert server.env()["VLLM_API_KEY"] == "s3cret"  # type: ignore[attr-defined]


def test_hf_command_keeps_the_key_out_of_argv(tiny_model: Path) -> None:
    server = make_server(HFSettings(model=str(tiny_model), api_key="s3cret", mode="continuous", batch_size=3))
    argv = server.argv(23456)  # type: ignore[attr-defined]
    assert "s3cret" not in " ".join(argv)
    assert ["--mode", "continuous"] == argv[argv.index("--mode") : argv.index("--mode") + 2]
    assert server.env()["HPLOAD_API_KEY"] == "s3cret"  # type: ignore[attr-defined]


def test_hf_settings_with_a_missing_model_dir_fail_naming_model(tmp_path: Path) -> None:
    from hpload.errors import HploadError

    with pytest.raises(HploadError, match="model"):
        make_server(HFSettings(model=str(tmp_path / "nope")))


def test_death_cause_picks_the_error_line() -> None:
    tail = "INFO starting\nTraceback (most recent call last):\n  File x\nRuntimeError: no CPU attention backend\nINFO bye"
    assert death_cause(tail) == "RuntimeError: no CPU attention backend"
    assert death_cause("all fine\n") == "no error line in its log"
