"""Generation engines behind the transformers wrapper: the :class:`Engine` interface and ``pipeline`` mode (static
batches through ``generate``) here; ``continuous`` mode (transformers' own continuous batching manager) in
continuous.py.

Both run the model on one background thread and hand token ids to the event loop, one ``call_soon_threadsafe`` per
decoding step for the whole batch (a wake-up per token per request would cost more than the tiny model's step).
Text is decoded on the event loop side; token counts always come from these ids.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import math
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hpload.errors import HploadError
from hpload.servers.hf.metrics import ServerMetrics
from hpload.servers.settings import HFSettings

if TYPE_CHECKING:
    import torch

log = logging.getLogger("hpload.hf")


@dataclass(frozen=True)
class GenParams:
    max_tokens: int
    min_tokens: int = 0
    ignore_eos: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None


@dataclass
class StreamEvent:
    token_ids: list[int]
    finish_reason: str | None = None  # "stop", "length", "abort", "error"
    error: str | None = None


@dataclass(eq=False)  # identity semantics: streams live in sets
class Stream:
    """One request's tokens as they are generated; read on the event loop through ``queue``."""

    prompt_ids: list[int]
    params: GenParams
    loop: asyncio.AbstractEventLoop
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    queue: asyncio.Queue[StreamEvent] = field(default_factory=asyncio.Queue)
    arrival_ns: int = field(default_factory=time.perf_counter_ns)
    first_token_ns: int | None = None
    last_token_ns: int | None = None
    output_tokens: int = 0
    finished: bool = False
    # Read by the generation thread each step; a plain bool is enough (single writer, GIL-atomic reads).
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


# (stream, new token ids, finish reason or None, error message or None)
Delivery = tuple[Stream, list[int], str | None, str | None]


class Engine(abc.ABC):
    """A loaded model plus a batching policy. Thread-safe ``submit`` from the event loop."""

    def __init__(self, settings: HFSettings, model: Any, tokenizer: Any, metrics: ServerMetrics) -> None:
        self.settings = settings
        self.model = model
        self.tokenizer = tokenizer
        self.metrics = metrics
        self.device = model.device
        eos = model.generation_config.eos_token_id
        if eos is None:
            eos = tokenizer.eos_token_id
        self.eos_ids: list[int] = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        pad = tokenizer.pad_token_id
        self.pad_id: int = int(pad if pad is not None else (self.eos_ids[0] if self.eos_ids else 0))
        self.context_len = int(getattr(model.config, "max_position_embeddings", 0) or tokenizer.model_max_length)
        self._streams: set[Stream] = set()

    @abc.abstractmethod
    def submit(self, stream: Stream) -> None: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    def cancel(self, stream: Stream) -> None:
        """Stop generating for a request whose client left or whose stop string appeared."""
        stream.cancel()

    @staticmethod
    def unsupported(p: GenParams) -> str | None:
        """Why this engine cannot honour a request's parameters, naming the field; None when it can."""
        return None

    def waiting(self) -> int:
        return sum(1 for s in self._streams if s.first_token_ns is None)

    def running(self) -> int:
        return sum(1 for s in self._streams if s.first_token_ns is not None)

    def _deliver(self, items: list[Delivery]) -> None:
        """On the event loop: timestamps, metrics, then the request's queue."""
        now = time.perf_counter_ns()
        produced = 0
        for stream, ids, reason, error in items:
            if stream.finished:
                continue
            if ids:
                produced += len(ids)
                stream.output_tokens += len(ids)
                if stream.first_token_ns is None:
                    stream.first_token_ns = now
                stream.last_token_ns = now
            if reason is not None:
                stream.finished = True
                self._streams.discard(stream)
                self.metrics.request_done(reason, len(stream.prompt_ids), stream.output_tokens, stream.arrival_ns,
                                          stream.first_token_ns, stream.last_token_ns)
            stream.queue.put_nowait(StreamEvent(ids, reason, error))
        if produced:
            self.metrics.tokens_generated(produced)


def load_model(settings: HFSettings, model_dir: str) -> tuple[Any, Any]:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dtype: Any = "auto" if settings.dtype == "auto" else getattr(torch, settings.dtype, None)
    if not (dtype == "auto" or isinstance(dtype, torch.dtype)):
        raise HploadError(f"dtype: '{settings.dtype}' is not a torch dtype; fix: auto, float32, bfloat16 or float16")
    model: Any  # transformers' stubs type .to() oddly
    if settings.load_format == "dummy" and settings.device_map:
        # from_config builds the whole model on one device; to spread random weights over several GPUs, stage them
        # as a checkpoint once and load it through the same device_map path a real checkpoint takes.
        import shutil
        import tempfile

        config = AutoConfig.from_pretrained(model_dir)
        staged = tempfile.mkdtemp(prefix="hpload-dummy-")
        try:
            AutoModelForCausalLM.from_config(config, dtype=None if dtype == "auto" else dtype).save_pretrained(staged)
            model = AutoModelForCausalLM.from_pretrained(staged, dtype=dtype, device_map=settings.device_map)
        finally:
            shutil.rmtree(staged, ignore_errors=True)
    elif settings.load_format == "dummy":
        config = AutoConfig.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_config(config, dtype=None if dtype == "auto" else dtype)
    else:
        kwargs: dict[str, Any] = {"dtype": dtype}
        if settings.device_map:
            kwargs["device_map"] = settings.device_map
        model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    if not settings.device_map:
        device = settings.device or ("cuda" if torch.cuda.is_available() else "cpu")
        model = model.to(device)
    model.eval()
    return model, tokenizer


def make_engine(settings: HFSettings, model: Any, tokenizer: Any, metrics: ServerMetrics) -> Engine:
    if settings.mode == "continuous":
        from hpload.servers.hf.continuous import ContinuousEngine

        return ContinuousEngine(settings, model, tokenizer, metrics)
    return PipelineEngine(settings, model, tokenizer, metrics)


# ------------------------------------------------------------------------------------------------ pipeline mode


_WAIT_CAP = 10  # the longest a batch waits to fill, in units of max_batch_wait_ms


class PipelineEngine(Engine):
    """Batches of up to ``batch_size`` waiting requests, each batch one ``model.generate`` call.

    A batch waits for more requests while they keep arriving (see ``_next_batch``). Per-request sampling,
    lengths and stops ride on a logits processor and a stopping criterion; new requests wait for the running batch
    to finish (static batching, as the research measured HF pipelines).
    """

    def __init__(self, settings: HFSettings, model: Any, tokenizer: Any, metrics: ServerMetrics) -> None:
        super().__init__(settings, model, tokenizer, metrics)
        self._pending: queue.Queue[Stream] = queue.Queue()
        self._deferred: list[Stream] = []  # did not fit the batch being formed; first in line for the next one
        self._closing = threading.Event()
        self._batch_running = 0
        self._thread = threading.Thread(target=self._run, name="hf-generate", daemon=True)
        self._thread.start()

    def submit(self, stream: Stream) -> None:
        self._streams.add(stream)
        self._pending.put(stream)

    def waiting(self) -> int:
        return self._pending.qsize() + len(self._deferred)

    def _fits(self, batch: list[Stream], candidate: Stream) -> bool:
        """Left padding runs every row to the longest prompt plus the largest max_tokens: keep that within the
        context, or a model with learned positions would fail the whole batch."""
        longest = max(len(candidate.prompt_ids), *(len(s.prompt_ids) for s in batch))
        most = max(candidate.params.max_tokens, *(s.params.max_tokens for s in batch))
        return longest + most <= self.context_len

    def running(self) -> int:
        return self._batch_running

    def close(self) -> None:
        self._closing.set()
        self._thread.join(timeout=5)

    def _next_batch(self) -> list[Stream]:
        """A batch closes when full, or when no request arrived for ``max_batch_wait_ms``, and at the latest
        ``_WAIT_CAP`` times that after its first request. Measuring the wait from the last arrival (not the first)
        keeps a burst together even when a busy client needs longer than the wait to send it all: with a fixed
        deadline, 32 requests sent over ~100 ms split into batches of 25 + 7 here and lost 40% of throughput."""
        earlier, self._deferred = self._deferred, []
        if earlier:
            first = earlier.pop(0)
        else:
            try:
                first = self._pending.get(timeout=0.2)
            except queue.Empty:
                return []
        batch = [first]
        for stream in earlier:  # requests deferred by the last batch go first, in arrival order
            if len(batch) < self.settings.batch_size and self._fits(batch, stream):
                batch.append(stream)
            else:
                self._deferred.append(stream)
        gap_s = self.settings.max_batch_wait_ms / 1000
        now = time.monotonic()
        hard_deadline = now + gap_s * _WAIT_CAP
        deadline = min(now + gap_s, hard_deadline)
        while len(batch) < self.settings.batch_size and len(self._deferred) < self.settings.batch_size:
            remaining = deadline - time.monotonic()
            try:
                candidate = self._pending.get(timeout=remaining) if remaining > 0 else self._pending.get_nowait()
            except queue.Empty:
                break
            deadline = min(time.monotonic() + gap_s, hard_deadline)
            if self._fits(batch, candidate):
                batch.append(candidate)
            else:
                self._deferred.append(candidate)
        aborted: list[Delivery] = [(s, [], "abort", None) for s in batch if s.cancelled]
        self._post(aborted)
        return [s for s in batch if not s.cancelled]

    def _run(self) -> None:
        while not self._closing.is_set():
            batch = self._next_batch()
            if not batch:
                continue
            try:
                self._generate(batch)
            except Exception as err:  # noqa: BLE001 - one bad batch must fail its requests, not the server
                log.exception("generate failed for a batch of %d", len(batch))
                msg = f"{type(err).__name__}: {err}"
                failed: list[Delivery] = [(s, [], "error", msg) for s in batch]
                self._post(failed)
            finally:
                self._batch_running = 0

    def _post(self, items: list[Delivery]) -> None:
        if items:
            items[0][0].loop.call_soon_threadsafe(self._deliver, items)

    def _generate(self, batch: list[Stream]) -> None:
        import torch
        from transformers import LogitsProcessorList, StoppingCriteriaList

        prompt_len = max(len(s.prompt_ids) for s in batch)
        rows = [[self.pad_id] * (prompt_len - len(s.prompt_ids)) + s.prompt_ids for s in batch]
        masks = [[0] * (prompt_len - len(s.prompt_ids)) + [1] * len(s.prompt_ids) for s in batch]
        input_ids = torch.tensor(rows, dtype=torch.long, device=self.device)
        attention_mask = torch.tensor(masks, dtype=torch.long, device=self.device)
        tracker = _BatchTracker(batch, prompt_len, self.eos_ids, self._post)
        self._batch_running = len(batch)
        self.metrics.batch_sizes.observe(len(batch))
        started = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                max_new_tokens=max(s.params.max_tokens for s in batch),
                do_sample=False,  # the sampler below already picked each row's token
                logits_processor=LogitsProcessorList([_RowSampler(batch, prompt_len, self.eos_ids, self.device)]),
                stopping_criteria=StoppingCriteriaList([tracker]),
                pad_token_id=self.pad_id,
                eos_token_id=self.eos_ids or None,
            )
        tracker.finish_all("length")
        log.debug("batch of %d: %d steps in %.3f s", len(batch), out.shape[1] - prompt_len,
                  time.perf_counter() - started)


class _RowSampler:
    """A logits processor that applies each request's own sampling, then leaves one finite logit per row so that
    greedy decoding inside ``generate`` picks exactly the token sampled here."""

    def __init__(self, batch: list[Stream], prompt_len: int, eos_ids: list[int], device: Any) -> None:
        import torch

        self.batch = batch
        self.prompt_len = prompt_len
        self.eos_ids = eos_ids
        self.sample_rows = [i for i, s in enumerate(batch) if s.params.temperature > 0 and s.params.seed is None]
        self.seeded_rows = [i for i, s in enumerate(batch) if s.params.temperature > 0 and s.params.seed is not None]
        self.temps = torch.tensor([batch[i].params.temperature for i in self.sample_rows], device=device)
        self.top_ps = torch.tensor([batch[i].params.top_p for i in self.sample_rows], device=device)
        self.generators: dict[int, torch.Generator] = {}
        self._no_eos_rows: list[int] = []
        self._no_eos_index: tuple[torch.Tensor, torch.Tensor] | None = None
        for i in self.seeded_rows:
            gen = torch.Generator(device=device)
            gen.manual_seed(int(batch[i].params.seed or 0))
            self.generators[i] = gen

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        import torch

        generated = input_ids.shape[1] - self.prompt_len
        if self.eos_ids:
            no_eos = [i for i, s in enumerate(self.batch) if s.params.ignore_eos or generated < s.params.min_tokens]
            if no_eos:
                if no_eos != self._no_eos_rows:  # the index tensors change only when a min_tokens is reached
                    self._no_eos_rows = no_eos
                    self._no_eos_index = (torch.tensor(no_eos)[:, None], torch.tensor(self.eos_ids)[None, :])
                scores[self._no_eos_index] = -math.inf
        if self.sample_rows:
            idx = torch.tensor(self.sample_rows, device=scores.device)
            picked = _sample(scores[idx], self.temps, self.top_ps, None)
            _force(scores, idx, picked)
        for i in self.seeded_rows:
            p = self.batch[i].params
            picked = _sample(scores[i : i + 1], torch.tensor([p.temperature]), torch.tensor([p.top_p]), self.generators[i])
            _force(scores, torch.tensor([i]), picked)
        return scores


def _sample(logits: torch.Tensor, temps: torch.Tensor, top_ps: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    import torch

    probs = torch.softmax(logits / temps[:, None].to(logits.dtype), dim=-1)
    if bool((top_ps < 1).any()):
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(dim=-1) - sorted_probs > top_ps[:, None]
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=gen).squeeze(-1)


def _force(scores: torch.Tensor, rows: torch.Tensor, tokens: torch.Tensor) -> None:
    scores[rows] = -math.inf
    scores[rows, tokens] = 0.0


class _BatchTracker:
    """A stopping criterion run after every step: it hands each row's new token to its request, and stops rows
    that reached their own ``max_tokens``, sampled EOS, or were cancelled (client gone, stop string seen)."""

    def __init__(self, batch: list[Stream], prompt_len: int, eos_ids: list[int],
                 post: Callable[[list[Delivery]], None]) -> None:
        self.batch = batch
        self.prompt_len = prompt_len
        self.eos_ids = set(eos_ids)
        self.post = post
        self.done = [False] * len(batch)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        import torch

        generated = input_ids.shape[1] - self.prompt_len
        newest = input_ids[:, -1].tolist()
        items: list[Delivery] = []
        for i, stream in enumerate(self.batch):
            if self.done[i]:
                continue
            if stream.cancelled:
                self.done[i] = True
                items.append((stream, [], "abort", None))
                continue
            token = int(newest[i])
            reason = None
            if token in self.eos_ids:
                reason = "stop"
            elif generated >= stream.params.max_tokens:
                reason = "length"
            self.done[i] = reason is not None
            items.append((stream, [token], reason, None))
        self.post(items)
        return torch.tensor(self.done, dtype=torch.bool, device=input_ids.device)

    def finish_all(self, reason: str) -> None:
        items: list[Delivery] = [(s, [], reason, None) for i, s in enumerate(self.batch) if not self.done[i]]
        self.done = [True] * len(self.batch)
        self.post(items)
