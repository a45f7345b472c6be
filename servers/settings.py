"""Typed settings for every kind of server hpload can drive, picked by their ``kind`` field.

Scenario files embed these tables verbatim, so unknown keys are errors (``extra="forbid"``): a typo must fail
before any process starts, naming the field.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class VllmSettings(_Strict):
    """vLLM's OpenAI-compatible server, started as ``python -m vllm.entrypoints.openai.api_server``."""

    kind: Literal["vllm"] = "vllm"
    label: str = "vllm"
    model: str | None = Field(default=None, description="local model directory (default: the embedded tiny model)")
    served_model_name: str | None = None
    dtype: str = "auto"
    max_model_len: int | None = Field(default=None, gt=0)
    max_num_seqs: int | None = Field(default=None, gt=0)
    max_num_batched_tokens: int | None = Field(default=None, gt=0)
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)
    tensor_parallel_size: int = Field(default=1, ge=1)
    pipeline_parallel_size: int = Field(default=1, ge=1)
    data_parallel_size: int = Field(default=1, ge=1)
    block_size: int | None = Field(default=None, gt=0)
    enable_prefix_caching: bool | None = None
    enable_chunked_prefill: bool | None = Field(
        default=None, description="split long prefills into chunks that share steps with decodes (None: vLLM's choice)")
    api_server_count: int | None = Field(
        default=None, ge=1, description="API server processes in front of the engine (None: vLLM's choice)")
    async_scheduling: bool | None = Field(
        default=None, description="schedule the next step while the current one runs (where vLLM has it)")
    load_format: str | None = None  # "dummy" gives a real architecture with random weights
    seed: int | None = None
    extra_args: list[str] = Field(default_factory=list)  # any other vLLM flag, passed through as given
    env: dict[str, str] = Field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int | None = Field(default=None, ge=0, le=65535)  # None = a free port
    api_key: SecretStr | None = None
    startup_timeout_s: float = Field(default=600.0, gt=0)


class HFSettings(_Strict):
    """hpload's own OpenAI-compatible server around a HuggingFace transformers model (``hpload serve hf``)."""

    kind: Literal["hf"] = "hf"
    label: str = "hf"
    model: str | None = Field(default=None, description="local model directory (default: the embedded tiny model)")
    served_model_name: str | None = None
    mode: Literal["pipeline", "continuous"] = Field(
        default="pipeline",
        description="pipeline: static batches through generate(); continuous: transformers' continuous batching")
    batch_size: int = Field(default=8, ge=1, description="most requests per batch")
    max_batch_wait_ms: float = Field(
        default=5.0, ge=0, description="pipeline: a batch closes when full or after this long with no new request")
    dtype: str = Field(default="auto", description="auto, float32, bfloat16, float16")
    device: str | None = Field(default=None, description="cpu, cuda, cuda:1 (default: cuda when present, else cpu)")
    device_map: str | None = Field(default=None, description="e.g. auto, to spread a model over several GPUs")
    max_new_tokens_limit: int = Field(default=4096, ge=1, description="largest max_tokens a request may ask")
    load_format: Literal["auto", "dummy"] = Field(
        default="auto", description="dummy = random weights from config.json (from_config)")
    torch_threads: int | None = Field(
        default=None, ge=1,
        description="CPU threads for torch (default: torch's choice; 1 avoids spin-wait stalls on a busy CPU)")
    host: str = "127.0.0.1"
    port: int | None = Field(default=None, ge=0, le=65535)
    api_key: SecretStr | None = None
    startup_timeout_s: float = Field(default=300.0, gt=0)


class EchoSettings(_Strict):
    """The calibration server: streams a set number of tokens at a set TTFT and inter-token delay."""

    kind: Literal["echo"] = "echo"
    label: str = "echo"
    ttft_ms: float = Field(default=20.0, ge=0, description="delay from request to first token")
    itl_ms: float = Field(default=5.0, ge=0, description="delay between tokens")
    output_tokens: int = Field(default=64, ge=1, description="tokens per reply when a request sets no max_tokens")
    precise: bool = Field(default=True, description="microsecond timers (select() on epoll, no timer slack)")
    """Microsecond timers (writes ~40 us late at the median); false = asyncio's default loop, whose waits round up
    to whole milliseconds (~0.5 ms late)."""
    trace: str | None = Field(
        default=None, description="a file for one JSON line per finished stream: id, arrival, every write")
    """A file to get one JSON line per finished stream: its X-Request-Id, kernel arrival and every write time."""
    batching: bool = Field(
        default=False, description="behave like a batching inference server (docs/capacity.md); ttft/itl unused")
    """Behave like a batching inference server (FIFO queue, steps that grow with the batch, a prefill cost per
    prompt token, ``max_batch``): ttft_ms/itl_ms are then unused. The model: docs/capacity.md."""
    step_ms: float = Field(default=10.0, ge=0, description="batching: fixed time of one step")
    step_per_seq_ms: float = Field(default=0.5, ge=0, description="batching: step time added per running request")
    max_batch: int = Field(default=16, ge=1, description="batching: most requests in one step")
    prefill_ms_per_token: float = Field(
        default=0.02, ge=0, description="batching: step time added per prompt token admitted in the step")
    served_model_name: str = "echo"
    host: str = "127.0.0.1"
    allow_remote: bool = Field(
        default=False, description="let host be an address other than loopback (e.g. a test network namespace's own)")
    """The echo server refuses a non-loopback bind without it: the one exception to hpload's loopback-only rule,
    for tests that reach it from other network namespaces (tests/test_shards_netns.py)."""
    port: int | None = Field(default=None, ge=0, le=65535)
    api_key: SecretStr | None = None
    startup_timeout_s: float = Field(default=30.0, gt=0)


class ExternalSettings(_Strict):
    """An OpenAI-compatible server hpload does not manage: it only attaches to the URL."""

    kind: Literal["external"] = "external"
    label: str = "external"
    url: str  # base URL, e.g. http://127.0.0.1:8000
    model: str | None = None  # None = the first id from /v1/models
    api_key: SecretStr | None = None
    metrics_url: str | None = None  # default: URL/metrics when it answers
    tokenizer: str | None = Field(default=None, description=(
        "the served model's tokenizer (a model directory or tokenizer.json), as vLLM bench's --tokenizer: prompts are "
        "then built to exact token lengths and checked against the server's usage"))
    startup_timeout_s: float = Field(default=30.0, gt=0)

