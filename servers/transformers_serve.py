"""HuggingFace's own OpenAI-compatible server, ``transformers serve``, as a supervised subprocess (kind "transformers").

Everything this kind needs lives here: its typed settings (``hpload serve transformers`` builds its flags from them),
the check that the installed transformers offers each setting (before anything starts), the launcher, and what the
server cannot do (``unsupported_request_fields``, which the generic runner reads). The kind's one entry is in
hpload.servers.kinds.

What the installed server (transformers 5.19) does with a request, read from its source and checked by a test:
- ``ignore_eos``, ``min_tokens`` and ``return_token_ids`` are not in its request schema: a request carrying them is
  refused with HTTP 422. hpload leaves them out for this server, so output lengths are not fixed (the model may stop
  at EOS); each result and the scenario say so.
- ``stream_options`` is ignored, but every stream ends with a usage chunk anyway, so token counts come from the
  server's usage as for vLLM. That chunk carries an empty choice with the finish reason. Tokens that decode to no
  text (EOS) get no chunk of their own, so when usage counts more tokens than chunks came, the client counts that
  last chunk as the one that delivered them (as vLLM's empty-text EOS chunk); otherwise it is only the trailer.
- Streams end without ``data: [DONE]``: the end of the body ends the stream.
- No Prometheus ``/metrics``, no API key, and no served-model-name: the model id is the path it was started with.
- Weights must exist: a config-only directory (``hpload model like``) or ``load_format = "dummy"`` gets random
  weights staged once into the server's work directory by the launched process itself, then loaded like a checkpoint.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from hpload.errors import HploadError
from hpload.servers.base import ProcessServer

# Request fields the installed server refuses (422) although hpload's workload can send them; the loadgen omits them.
UNSUPPORTED_REQUEST_FIELDS = ("ignore_eos", "min_tokens", "return_token_ids")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")

# settings field -> the keyword of transformers' ``Serve.__init__`` it maps to (its flag is that name, dashed)
_VALUED = ("dtype", "device", "cb_block_size", "cb_num_blocks", "cb_max_batch_tokens", "cb_max_memory_percent",
           "attn_implementation", "quantization", "default_seed")
_BOOLS = ("continuous_batching", "compile", "trust_remote_code", "cb_use_cuda_graph")


# Continuous batching sizes its KV cache as a fraction of the device's memory, default 0.9; on a CPU that is 90% of the
# machine's RAM (it OOM-killed the server beside vLLM here). hpload's CPU default is this fraction, as vLLM's CPU
# build gets a 1 GiB cache; cb_num_blocks or cb_max_memory_percent override it.
CPU_CB_MEMORY_FRACTION = 0.05


class TransformersSettings(BaseModel):
    """``transformers serve`` (HuggingFace's OpenAI-compatible server), started as a supervised process group."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    kind: Literal["transformers"] = "transformers"
    label: str = "transformers"
    model: str | None = Field(default=None, description="local model directory (default: the embedded tiny model)")
    dtype: str = Field(default="auto", description="auto, float32, bfloat16, float16")
    device: str | None = Field(default=None, description="cpu, cuda, cuda:1, auto (default: the server's auto)")
    continuous_batching: bool = Field(
        default=False, description="paged-attention continuous batching, tuned by the cb-* settings")
    cb_block_size: int | None = Field(default=None, gt=0, description="continuous batching: KV-cache block size")
    cb_num_blocks: int | None = Field(default=None, gt=0, description="continuous batching: KV-cache blocks")
    cb_max_batch_tokens: int | None = Field(
        default=None, gt=0, description="continuous batching: most tokens per batch")
    cb_max_memory_percent: float | None = Field(
        default=None, gt=0, le=1,
        description=f"continuous batching: device memory fraction for the KV cache (on a CPU hpload's default is "
                    f"{CPU_CB_MEMORY_FRACTION} unless cb-num-blocks is set)")
    cb_use_cuda_graph: bool | None = Field(default=None, description="continuous batching: CUDA graphs")
    attn_implementation: str | None = Field(
        default=None, description="eager, sdpa, flash_attention_2, flex_attention, ...")
    compile: bool = Field(default=False, description="torch.compile with a static cache")
    quantization: Literal["bnb-4bit", "bnb-8bit"] | None = Field(default=None, description="bitsandbytes quantization")
    trust_remote_code: bool = Field(default=False, description="run the model directory's own code")
    default_seed: int | None = Field(default=None, description="the server's default sampling seed")
    load_format: Literal["auto", "dummy"] = Field(
        default="auto", description="dummy = random weights from config.json (also for a directory with no weights)")
    torch_threads: int | None = Field(
        default=None, ge=1, description="OMP threads for torch (default: torch's choice; 1 on a small shared CPU)")
    extra_args: list[str] = Field(default_factory=list)  # any other `transformers serve` flag, passed as given
    env: dict[str, str] = Field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int | None = Field(default=None, ge=0, le=65535)  # None = a free port
    startup_timeout_s: float = Field(default=300.0, gt=0)

    @field_validator(*_VALUED, *_BOOLS)
    @classmethod
    def _installed_has_it(cls, value: Any, info: ValidationInfo) -> Any:
        # A setting this transformers lacks fails while the scenario or the flags are read, before any server
        # starts. Without transformers at all, parsing still works (a file can be checked elsewhere).
        name = str(info.field_name)
        if value is None or value == cls.model_fields[name].default or importlib.util.find_spec("transformers") is None:
            return value
        version, options = installed_options()
        if name not in options:
            raise ValueError(f"the installed transformers {version} has no --{name.replace('_', '-')} in "
                             "`transformers serve`; fix: remove it or upgrade transformers")
        return value


@functools.cache
def installed_options() -> tuple[str, frozenset[str]]:
    """(transformers version, the keywords its ``transformers serve`` takes), read from the source without importing
    transformers (seconds of import for a check that must come before any start)."""
    try:
        version = importlib.metadata.version("transformers")
        spec = importlib.util.find_spec("transformers")
    except (importlib.metadata.PackageNotFoundError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise HploadError("server kind 'transformers': transformers is not installed; fix: pip install 'transformers[serving]'")
    source = Path(next(iter(spec.submodule_search_locations))) / "cli" / "serve.py"
    if not source.is_file():
        raise HploadError(f"server kind 'transformers': transformers {version} has no `transformers serve`; "
                          "fix: install transformers >= 5")
    tree = ast.parse(source.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == "Serve":
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                    args = item.args
                    return version, frozenset(a.arg for a in [*args.args, *args.kwonlyargs] if a.arg != "self")
    raise HploadError(f"server kind 'transformers': cannot read the options of transformers {version}'s serve "
                      "command; fix: install a transformers release with `transformers serve`")


def unsupported_setting(settings: TransformersSettings) -> str | None:
    """One line naming the first set setting the installed ``transformers serve`` lacks, with the version."""
    version, options = installed_options()
    defaults = TransformersSettings.model_fields
    for field in (*_VALUED, *_BOOLS):
        value = getattr(settings, field)
        if value is None or value == defaults[field].default:
            continue
        if field not in options:
            return (f"{field}: the installed transformers {version} has no --{field.replace('_', '-')} in "
                    "`transformers serve`; fix: remove it or upgrade transformers")
    return None


def check_supported(settings: TransformersSettings) -> None:
    """Refuse what the installed server cannot start with, before anything starts."""
    problem = unsupported_setting(settings)
    if problem:
        raise HploadError(f"servers.{settings.label}.{problem}")
    if importlib.util.find_spec("accelerate") is None:
        # transformers serve always loads with a device_map, which needs accelerate.
        raise HploadError("server kind 'transformers': `transformers serve` needs the accelerate package; "
                          "fix: pip install accelerate")


def on_cpu(settings: TransformersSettings) -> bool:
    if settings.device is not None and settings.device != "auto":
        return settings.device == "cpu"
    return not Path("/dev/nvidia0").exists() and not Path("/dev/nvidiactl").exists()


def serve_args(settings: TransformersSettings, model_dir: str, port: int) -> list[str]:
    """The ``transformers serve`` arguments: the model is forced (preloaded before the port opens)."""
    s = settings
    argv = [model_dir, "--host", s.host, "--port", str(port), "--log-level", "info"]
    if s.continuous_batching and s.cb_num_blocks is None and s.cb_max_memory_percent is None and on_cpu(s):
        argv += ["--cb-max-memory-percent", str(CPU_CB_MEMORY_FRACTION)]
    for field in _VALUED:
        value = getattr(s, field)
        if value is not None:
            argv += [f"--{field.replace('_', '-')}", str(value)]
    for field in _BOOLS:
        value = getattr(s, field)
        flag = field.replace("_", "-")
        if value is not None and value != TransformersSettings.model_fields[field].default:
            argv.append(f"--{flag}" if value else f"--no-{flag}")
    return argv + s.extra_args


def has_weights(model_dir: Path) -> bool:
    return any((model_dir / name).is_file() for name in WEIGHT_FILES)


class TransformersServer(ProcessServer[TransformersSettings]):
    unsupported_request_fields = UNSUPPORTED_REQUEST_FIELDS

    def __init__(self, settings: TransformersSettings, *, workdir: Path | None = None) -> None:
        check_supported(settings)
        super().__init__(settings, workdir=workdir)
        self.stage_dummy = settings.load_format == "dummy" or not has_weights(Path(self.model_dir))
        self._staged: Path | None = None

    def local_model_dir(self, model: str | None) -> str:
        from hpload.model import resolve_model

        return str(resolve_model(model))

    @classmethod
    def engine_name(cls) -> str:
        return f"transformers serve {installed_options()[0]}"

    async def start(self) -> None:
        if self.stage_dummy:
            # The random weights are made by the launched process (torch stays out of hpload's own process); the
            # directory is named now because the model id the server answers to is this path.
            if self._workdir is not None:
                self._workdir.mkdir(parents=True, exist_ok=True)
            self._staged = Path(tempfile.mkdtemp(prefix=f"{self.label}-dummy-", dir=self._workdir))
            self.model = str(self._staged)
        await super().start()
        self.metrics_url = None  # it serves no /metrics

    def argv(self, port: int) -> list[str]:
        # -c, not -m: the package's __init__ imports this module too, and -m would run a second copy of it.
        argv = [sys.executable, "-c", "import sys; from hpload.servers.transformers_serve import main; "
                "sys.exit(main(sys.argv[1:]))"]
        if self._staged is not None:
            argv += ["--stage-dummy", self.model_dir, str(self._staged), "--dtype", self.settings.dtype]
        return [*argv, "--", "serve", *serve_args(self.settings, self.model, port)]

    def env(self) -> dict[str, str]:
        env = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_DISABLE_TELEMETRY": "1",
               "DO_NOT_TRACK": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}
        if self.settings.torch_threads:
            env["OMP_NUM_THREADS"] = str(self.settings.torch_threads)
        env.update(self.settings.env)
        return env

    async def stop(self) -> None:
        await super().stop()
        if self._staged is not None:
            shutil.rmtree(self._staged, ignore_errors=True)


# ---- the launched process: stage random weights when asked, then run transformers' own CLI in this process ----


def _stage_dummy(source: Path, dest: Path, dtype: str) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(source))
    torch_dtype = None if dtype == "auto" else getattr(torch, dtype, None)
    AutoModelForCausalLM.from_config(config, dtype=torch_dtype).save_pretrained(str(dest))
    for item in source.iterdir():
        if item.is_file() and not (dest / item.name).exists():
            shutil.copy2(item, dest / item.name)


def main(argv: list[str]) -> int:
    if "--" not in argv:
        raise SystemExit("usage: python -m hpload.servers.transformers_serve [--stage-dummy SRC DST --dtype D] -- serve ...")
    cut = argv.index("--")
    ours, theirs = argv[:cut], argv[cut + 1 :]
    if ours[:1] == ["--stage-dummy"]:
        print(f"hpload: staging random weights for {ours[1]} in {ours[2]}", flush=True)
        _stage_dummy(Path(ours[1]), Path(ours[2]), ours[4] if len(ours) > 4 else "auto")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.cli.transformers import main as transformers_main

    sys.argv = ["transformers", *theirs]
    transformers_main()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
