"""Local models with no hub: a tiny random-weight Llama, and real architectures' shapes for dummy-weight runs.

The tokenizer is a byte-level BPE trained with ``tokenizers`` on Python's own standard library sources (code is
close to the research's HumanEval workload, and it ships with every Python). Weights are random: generated text is
junk, which is fine for load testing as long as tokens are counted from ids, never by re-tokenizing text.
"""

from __future__ import annotations

import json
import os
import sysconfig
from importlib import resources
from pathlib import Path
from typing import Any

from hpload.errors import HploadError
from hpload.paths import cache_dir, default_model_dir

VOCAB_SIZE = 4096
SPECIAL_TOKENS = ["<|begin_of_text|>", "<|end_of_text|>", "<|pad|>"]
BOS, EOS, PAD = SPECIAL_TOKENS
# A minimal chat template: role headers then content, so /v1/chat/completions works on both servers.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
# head_dim 64: vLLM's CPU attention accepts 32..256, and 64 works on every backend.
TINY_CONFIG: dict[str, Any] = {
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "head_dim": 64,
    "max_position_embeddings": 2048,
    "vocab_size": VOCAB_SIZE,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "tie_word_embeddings": True,
}
_TRAINING_FILES = ("argparse.py", "asyncio/base_events.py", "collections/__init__.py", "dataclasses.py",
                   "functools.py", "json/decoder.py", "pathlib.py", "string.py", "textwrap.py", "typing.py")


def _training_text() -> list[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts = [p.read_text(encoding="utf-8", errors="replace") for name in _TRAINING_FILES if (p := stdlib / name).is_file()]
    if not texts:  # a stripped Python without sources: fall back to the docstrings of loaded modules
        import sys

        texts = [doc for m in list(sys.modules.values()) if isinstance(doc := getattr(m, "__doc__", None), str)]
    return texts


def build_tokenizer(out_dir: Path) -> None:
    """Train a byte-level BPE tokenizer and save it as a transformers fast tokenizer with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    cached = cache_dir() / "tokenizer" / f"bpe-{VOCAB_SIZE}.json"
    if cached.is_file():
        tok = Tokenizer.from_file(str(cached))
    else:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        trainer = trainers.BpeTrainer(
            vocab_size=VOCAB_SIZE,
            special_tokens=SPECIAL_TOKENS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(_training_text(), trainer=trainer)
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".tmp{os.getpid()}")
        tok.save(str(tmp))
        os.replace(tmp, cached)

    # PreTrainedTokenizerFast, not a Llama tokenizer class: the latter mangles spaces in transformers 5.
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, model_max_length=2048
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out_dir))


def build_tiny(out_dir: Path, *, seed: int = 0) -> Path:
    """A tiny random-weight Llama (about 1.5M parameters) that vLLM's CPU build and transformers both load."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + f".partial{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    build_tokenizer(tmp)
    torch.manual_seed(seed)
    config = LlamaConfig(
        **TINY_CONFIG,
        bos_token_id=SPECIAL_TOKENS.index(BOS),
        eos_token_id=SPECIAL_TOKENS.index(EOS),
        pad_token_id=SPECIAL_TOKENS.index(PAD),
    )
    config.dtype = "float32"
    model = LlamaForCausalLM(config)
    model.save_pretrained(str(tmp), safe_serialization=True)
    # Rename into place last, so an interrupted build never leaves a directory that looks complete.
    if out_dir.exists():
        import shutil

        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir


def is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "tokenizer.json").is_file()


def ensure_tiny_model(path: Path | None = None) -> Path:
    """The embedded default model, built in the cache on first use (well under 30 s)."""
    path = Path(path) if path is not None else default_model_dir()
    if not (is_model_dir(path) and (path / "model.safetensors").is_file()):
        build_tiny(path)
    return path


def resolve_model(model: str | None) -> Path:
    """A model setting as a local directory: None means the embedded tiny model."""
    if model is None:
        return ensure_tiny_model()
    path = Path(model).expanduser()
    if not is_model_dir(path):
        raise HploadError(
            f"model: '{model}' is not a local model directory (config.json + tokenizer.json); "
            "make one with 'hpload model tiny DIR' or 'hpload model like PRESET DIR'"
        )
    return path.resolve()


# ---- real architectures' shapes, for --load-format dummy (vLLM) and from_config (transformers) ----


def list_presets() -> dict[str, dict[str, Any]]:
    presets = {}
    for entry in resources.files("hpload.presets").iterdir():
        if entry.name.endswith(".json"):
            presets[entry.name[: -len(".json")]] = json.loads(entry.read_text(encoding="utf-8"))
    return dict(sorted(presets.items()))


def build_like(preset: str, out_dir: Path) -> Path:
    """config.json of a real architecture plus the local tokenizer: no weights, for dummy-weight runs."""
    presets = list_presets()
    if preset not in presets:
        raise HploadError(f"preset '{preset}' is unknown; choose from {', '.join(presets)} ('hpload model like --list')")
    spec = dict(presets[preset])
    spec.pop("description", None)
    from transformers import AutoConfig

    model_type = spec.pop("model_type")
    config = AutoConfig.for_model(
        model_type,
        bos_token_id=SPECIAL_TOKENS.index(BOS),
        eos_token_id=SPECIAL_TOKENS.index(EOS),
        pad_token_id=SPECIAL_TOKENS.index(PAD),
        **spec,
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(out_dir))
    build_tokenizer(out_dir)
    return out_dir
