"""A prepared request body and what builds every kind of body: the tokenizer loader and the fallback words. Its
own module below workload.py, so the shaped sources (traces, prompts, conversations) build bodies without importing
the module that dispatches to them (tests/test_layering.py: no import cycle)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpload.errors import HploadError

if TYPE_CHECKING:
    from hpload.loadgen.specs import WorkloadSpec

_WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at which but have an they"
    " you were her she there been one all we their has would when if so no will more can out other into some time"
).split()


@dataclass(frozen=True, slots=True)
class PreparedRequest:
    body: bytes
    expected_in: int | None  # prompt tokens by the client tokenizer (completions endpoint only)
    at_s: float | None = None  # a trace's send time (source = "trace"), before the load's scaling
    input_len: int | None = None  # the asked prompt length, where the workload sets one per request
    output_len: int | None = None


def load_tokenizer(path: str | Path) -> Any:
    """A ``tokenizers.Tokenizer`` from a model directory or a tokenizer.json file."""
    from tokenizers import Tokenizer

    p = Path(path)
    file = p / "tokenizer.json" if p.is_dir() else p
    if not file.is_file():
        raise HploadError(f"tokenizer_path: no tokenizer.json at {p}; fix: point it at a model directory")
    return Tokenizer.from_file(str(file))


def stream_and_sampling(spec: WorkloadSpec) -> dict[str, Any]:
    """The body fields every request of ``spec`` carries whatever its prompt: streaming and sampling."""
    body: dict[str, Any] = {}
    if spec.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    if spec.temperature is not None:
        body["temperature"] = spec.temperature
    if spec.top_p is not None:
        body["top_p"] = spec.top_p
    return body
