"""Where hpload keeps its cache (the embedded tiny model) and default results."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    root = os.environ.get("HPLOAD_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "hpload"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_model_dir() -> Path:
    """The embedded default model: a tiny random-weight Llama made locally on first use."""
    return cache_dir() / "models" / "tiny-llama"
