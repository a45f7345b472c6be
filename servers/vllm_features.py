"""What the installed vLLM build accepts, read from its source files without importing it (importing vLLM takes
seconds and initialises torch): a flag is used only where this build declares it, never by version guesses.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

# Where vLLM's front-end arguments have lived: entrypoints/openai/cli_args.py, then entrypoints/launchers/ (0.32);
# any entrypoints/**/cli_args.py is read, so a move in another release is still found.
_ARG_GLOB = "entrypoints/**/cli_args.py"


@functools.cache
def _arg_sources() -> str:
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        return ""
    root = Path(next(iter(spec.submodule_search_locations)))
    texts = []
    for path in sorted(root.glob(_ARG_GLOB)):
        try:
            texts.append(path.read_text(encoding="utf-8", errors="replace"))
        except OSError:
            continue
    return "\n".join(texts)


def declares(field: str) -> bool:
    """Whether the installed vLLM's front-end arguments declare ``field`` (the dataclass name, underscores)."""
    return f"{field}:" in _arg_sources()


def per_request_metrics_argv(extra_args: list[str]) -> list[str]:
    """``--enable-per-request-metrics`` where this build has it. Not with ``--disable-log-stats``: the metrics come
    from the engine's stats, and vLLM refuses the pair at start-up."""
    if not declares("enable_per_request_metrics"):
        return []
    if "--disable-log-stats" in extra_args or "--enable-per-request-metrics" in extra_args:
        return []
    return ["--enable-per-request-metrics"]
