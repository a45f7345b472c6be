"""The transformers wrapper's ``continuous`` mode: transformers' continuous batching manager behind the
:class:`~hpload.servers.hf.engine.Engine` interface (``pipeline`` mode is in engine.py)."""

from __future__ import annotations

import contextlib
from typing import Any

from hpload.servers.hf.engine import Engine, GenParams, Stream
from hpload.servers.hf.metrics import ServerMetrics
from hpload.servers.settings import HFSettings


class ContinuousEngine(Engine):
    """transformers' ``ContinuousBatchingManager``: requests join and leave the running batch every step.

    The config is explicit and small on CPU: its defaults size the KV cache from GPU memory, and on this CPU box
    they made 16 x 32 tokens take 59 s instead of ~7 s.
    """

    def __init__(self, settings: HFSettings, model: Any, tokenizer: Any, metrics: ServerMetrics) -> None:
        super().__init__(settings, model, tokenizer, metrics)
        from transformers import ContinuousBatchingConfig, GenerationConfig

        on_gpu = self.device.type == "cuda"
        self._cb_config = ContinuousBatchingConfig(
            page_size=64 if not on_gpu else 256,
            num_blocks=None if on_gpu else max(64, settings.batch_size * 8),
            max_batch_tokens=None if on_gpu else max(512, settings.batch_size * 2),
            max_requests_per_batch=settings.batch_size,
            use_cuda_graph=None if on_gpu else False,
            per_request_processors=True,
            allow_block_sharing=False,  # prefix caching would leak state between benchmark runs
        )
        # Temperature must differ from its neutral value here, or no per-request processor is built. No top_p
        # processor: it sorts the vocabulary for every row every step, and cut CPU throughput from ~1200 to ~730
        # tok/s at batch 32; requests that need top_p go to pipeline mode (see ``unsupported``).
        gen_config = GenerationConfig(
            max_new_tokens=settings.max_new_tokens_limit,
            do_sample=True,
            temperature=0.5,
            top_p=1.0,
            top_k=0,
            eos_token_id=self.eos_ids or None,
            pad_token_id=self.pad_id,
        )
        self.manager = model.init_continuous_batching(
            generation_config=gen_config, continuous_batching_config=self._cb_config
        )
        self.manager.start()
        self._sent: dict[str, int] = {}
        self._closed = False

    def submit(self, stream: Stream) -> None:
        p = stream.params
        self._streams.add(stream)
        self._sent[stream.request_id] = 0

        def on_result(output: Any) -> None:
            self._on_result(stream, output)

        self.manager.register_result_handler(stream.request_id, on_result)
        # A per-request EOS of -1 turns EOS off; min_tokens below max_tokens has no per-request processor here, so
        # the app only lets it through as "the same as ignore_eos" (see ContinuousEngine.supports).
        eos = -1 if (p.ignore_eos or p.min_tokens >= p.max_tokens) else None
        self.manager.add_request(
            input_ids=stream.prompt_ids,
            request_id=stream.request_id,
            max_new_tokens=p.max_tokens,
            streaming=True,
            eos_token_id=eos,
            temperature=max(p.temperature, 1e-4),  # 0 = greedy; the CB warper divides by it
        )

    @staticmethod
    def unsupported(p: GenParams) -> str | None:
        if p.seed is not None:
            return "seed: not supported in continuous mode (transformers' manager has one generator); use mode=pipeline"
        if p.top_p < 1:
            return "top_p: not supported in continuous mode (its per-request processor costs ~40% here); use mode=pipeline"
        if 0 < p.min_tokens < p.max_tokens and not p.ignore_eos:
            return "min_tokens: continuous mode supports only min_tokens = max_tokens or ignore_eos; use mode=pipeline"
        return None

    def _on_result(self, stream: Stream, output: Any) -> None:
        sent = self._sent.get(stream.request_id, 0)
        new = list(output.generated_tokens[sent:])
        self._sent[stream.request_id] = sent + len(new)
        reason: str | None = None
        error: str | None = None
        if output.is_finished():
            self._sent.pop(stream.request_id, None)
            if output.error:
                reason, error = "error", str(output.error)
            elif stream.cancelled:
                reason = "abort"
            elif len(output.generated_tokens) >= stream.params.max_tokens:
                reason = "length"
            else:
                reason = "stop"
        self._deliver([(stream, new, reason, error)])

    def cancel(self, stream: Stream) -> None:
        stream.cancel()
        with contextlib.suppress(Exception):
            self.manager.cancel_request(stream.request_id)
        # The manager drops cancelled requests silently (no final output), so finish the stream here, and drop the
        # result handler it would otherwise keep forever.
        with contextlib.suppress(AttributeError, KeyError):
            router = self.manager.output_router
            with router._lock:
                router.result_handlers.pop(stream.request_id, None)
        self._sent.pop(stream.request_id, None)
        self._deliver([(stream, [], "abort", None)])

    def running(self) -> int:
        return sum(1 for s in self._streams if s.first_token_ns is not None)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # hard_stop: the manager's thread is not a daemon, and a flushing stop would hold process exit until every
        # request in flight had finished generating.
        with contextlib.suppress(Exception):
            self.manager.stop(block=True, timeout=5, hard_stop=True)
