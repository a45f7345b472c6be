"""The transformers wrapper's HTTP side: an OpenAI-compatible Starlette app over an :class:`Engine`.

Every bad request is a 4xx with an OpenAI-style error body; only a failure inside ``generate`` is a 5xx (or, once a
stream has started, an ``error`` event inside it). Text is decoded incrementally from token ids; usage counts are
those ids, never a re-tokenization of the text.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from hpload.servers.hf import openai_api as oa
from hpload.servers.hf.engine import Engine, GenParams, Stream

log = logging.getLogger("hpload.hf")


class IncrementalDetokenizer:
    """Decodes a growing list of ids with O(1) work per token, never sending half a UTF-8 character.

    Fast tokenizers use ``tokenizers``' own ``DecodeStream`` (about 1.5 us a token here); others re-decode a short
    window (vLLM's prefix/read offsets), about 30 us a token.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._stream: Any = None
        backend = getattr(tokenizer, "_tokenizer", None)
        try:
            from tokenizers.decoders import DecodeStream

            if backend is not None:
                self._stream = DecodeStream(skip_special_tokens=True)
                self._backend = backend
        except ImportError:
            self._stream = None
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0

    def add(self, new_ids: list[int]) -> str:
        if self._stream is not None:
            step = self._stream.step
            return "".join(piece for i in new_ids if (piece := step(self._backend, i)))
        self.ids.extend(new_ids)
        decode = self.tokenizer.decode
        prefix_text = decode(self.ids[self.prefix_offset : self.read_offset], skip_special_tokens=True)
        new_text = decode(self.ids[self.prefix_offset :], skip_special_tokens=True)
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)
            return new_text[len(prefix_text) :]
        return ""


class StopMatcher:
    """Finds stop strings across token boundaries and holds back text that could be the start of one."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = stops
        self.text = ""
        self.emitted = 0
        self.hit = False

    def feed(self, delta: str) -> str:
        """Returns the text now safe to send; sets ``hit`` when a stop string appeared (it is never sent)."""
        if not self.stops:
            return delta
        self.text += delta
        cut = min((i for s in self.stops if (i := self.text.find(s, max(0, self.emitted - len(s)))) >= 0), default=-1)
        if cut >= 0:
            self.hit = True
            out = self.text[self.emitted : cut]
            self.text = self.text[:cut]
            self.emitted = cut
            return out
        hold = max((k for s in self.stops for k in range(1, len(s)) if self.text.endswith(s[:k])), default=0)
        safe = len(self.text) - hold
        out = self.text[self.emitted : safe]
        self.emitted = max(self.emitted, safe)
        return out

    def flush(self) -> str:
        out = self.text[self.emitted :]
        self.emitted = len(self.text)
        return out


class WrapperApp:
    def __init__(self, engine: Engine, *, model_name: str, api_key: str | None) -> None:
        self.engine = engine
        self.model_name = model_name
        self._api_key = api_key
        self.created = int(time.time())

    # ---- helpers

    def _authorize(self, request: Request) -> None:
        if not self._api_key:
            return
        header = request.headers.get("authorization", "")
        token = header[7:] if header.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(token.encode(), self._api_key.encode()):
            raise oa.ApiError(401, "missing or wrong API key: send 'Authorization: Bearer KEY'", code="invalid_api_key")

    def _prompt_ids(self, req: oa.CompletionRequest | oa.ChatRequest) -> list[int]:
        tok = self.engine.tokenizer
        if isinstance(req, oa.ChatRequest):
            messages = [{"role": m.role, "content": m.text()} for m in req.messages]
            if getattr(tok, "chat_template", None):
                text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            else:
                text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "
            return list(tok(text, add_special_tokens=False)["input_ids"])
        prompt = req.single_prompt()
        if isinstance(prompt, list):
            vocab = len(tok)
            if any(not isinstance(t, int) or t < 0 or t >= vocab for t in prompt):
                raise oa.ApiError(400, f"prompt: token ids must be integers in [0, {vocab})", param="prompt")
            return list(prompt)
        return list(tok(prompt)["input_ids"])

    def _params(self, req: oa.CompletionRequest | oa.ChatRequest, prompt_len: int) -> GenParams:
        context = self.engine.context_len
        limit = self.engine.settings.max_new_tokens_limit
        asked = req.output_limit() if isinstance(req, oa.ChatRequest) else req.max_tokens
        if prompt_len == 0:
            raise oa.ApiError(400, "prompt: empty prompt", param="prompt")
        if prompt_len >= context:
            raise oa.ApiError(
                400, f"prompt: {prompt_len} tokens, but the model's context is {context} tokens", param="prompt",
                code="context_length_exceeded",
            )
        if asked is not None and asked > limit:
            raise oa.ApiError(400, f"max_tokens: {asked} exceeds the server's limit of {limit}", param="max_tokens")
        max_tokens = asked if asked is not None else min(limit, context - prompt_len)
        if prompt_len + max_tokens > context:
            raise oa.ApiError(
                400,
                f"max_tokens: prompt ({prompt_len}) + max_tokens ({max_tokens}) exceeds the model's context of "
                f"{context} tokens",
                param="max_tokens",
                code="context_length_exceeded",
            )
        params = GenParams(
            max_tokens=max_tokens,
            min_tokens=min(req.min_tokens, max_tokens),
            ignore_eos=req.ignore_eos,
            # Below this, logits / temperature overflows to inf and sampling breaks: it is greedy anyway.
            temperature=req.temperature if req.temperature >= 1e-5 else 0.0,
            top_p=req.top_p,
            seed=req.seed,
        )
        if (why := self.engine.unsupported(params)) is not None:
            raise oa.ApiError(400, why, param=why.split(":", 1)[0])
        return params

    # ---- endpoints

    async def completions(self, request: Request) -> Response:
        return await self._generate(request, "completion")

    async def chat(self, request: Request) -> Response:
        return await self._generate(request, "chat")

    async def _generate(self, request: Request, kind: Literal["completion", "chat"]) -> Response:
        self._authorize(request)
        req = oa.parse_request(await request.body(), kind)
        if req.model != self.model_name:
            raise oa.ApiError(404, f"model: '{req.model}' is not served here; use '{self.model_name}'", param="model",
                              code="model_not_found")
        try:
            prompt_ids = self._prompt_ids(req)
        except oa.ApiError:
            raise
        except Exception as err:  # noqa: BLE001 - text the tokenizer or template rejects (lone surrogates...) is bad input
            field = "messages" if kind == "chat" else "prompt"
            raise oa.ApiError(400, f"{field}: cannot be tokenized ({type(err).__name__})", param=field) from None
        params = self._params(req, len(prompt_ids))
        stream = Stream(prompt_ids=prompt_ids, params=params, loop=asyncio.get_running_loop())
        self.engine.submit(stream)
        rid = oa.new_id("cmpl" if kind == "completion" else "chatcmpl")
        if req.stream:
            return StreamingResponse(self._sse(stream, req, kind, rid), media_type="text/event-stream")
        return await self._whole(stream, req, kind, rid)

    async def _events(self, stream: Stream, stops: list[str]) -> AsyncIterator[tuple[str, str | None, str | None]]:
        """(text delta, finish reason, error) per engine event; cancels generation if the consumer goes away."""
        detok = IncrementalDetokenizer(self.engine.tokenizer)
        matcher = StopMatcher(stops)
        try:
            while True:
                event = await stream.queue.get()
                delta = matcher.feed(detok.add(event.token_ids)) if event.token_ids else ""
                if matcher.hit:
                    self.engine.cancel(stream)
                    yield delta, "stop", None
                    return
                if event.finish_reason is not None:
                    yield delta + matcher.flush(), event.finish_reason, event.error
                    return
                yield delta, None, None
        finally:
            if not stream.finished:
                self.engine.cancel(stream)

    async def _sse(
        self, stream: Stream, req: oa.CompletionRequest | oa.ChatRequest, kind: Literal["completion", "chat"], rid: str
    ) -> AsyncIterator[bytes]:
        created = int(time.time())
        encoder = oa.ChunkEncoder(kind, rid, self.model_name, created)
        first = True
        async for delta, reason, error in self._events(stream, req.stop_list()):
            if reason == "error":
                yield oa.sse({"error": {"message": f"generation failed: {error}", "type": "server_error", "code": 500}})
                break
            finish = None if reason is None else ("length" if reason == "length" else "stop")
            yield encoder.encode(delta, finish, role=first)
            first = False
        if req.include_usage:
            use = oa.usage(len(stream.prompt_ids), stream.output_tokens)
            yield oa.sse(oa.usage_chunk(kind, rid, self.model_name, created, use))
        yield oa.sse("[DONE]")

    async def _whole(
        self, stream: Stream, req: oa.CompletionRequest | oa.ChatRequest, kind: Literal["completion", "chat"], rid: str
    ) -> Response:
        parts: list[str] = []
        finish = "stop"
        async for delta, reason, error in self._events(stream, req.stop_list()):
            parts.append(delta)
            if reason == "error":
                body = {"error": {"message": f"generation failed: {error}", "type": "server_error", "code": 500}}
                return JSONResponse(body, status_code=500)
            if reason is not None:
                finish = "length" if reason == "length" else "stop"
        use = oa.usage(len(stream.prompt_ids), stream.output_tokens)
        return JSONResponse(oa.full_response(kind, rid, self.model_name, "".join(parts), finish, use))

    async def models(self, request: Request) -> Response:
        self._authorize(request)
        card = {
            "id": self.model_name,
            "object": "model",
            "created": self.created,
            "owned_by": "hpload",
            "max_model_len": self.engine.context_len,
        }
        return JSONResponse({"object": "list", "data": [card]})

    async def health(self, request: Request) -> Response:
        return Response(status_code=200)

    async def metrics(self, request: Request) -> Response:
        text = self.engine.metrics.render(waiting=self.engine.waiting(), running=self.engine.running())
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")


def build_app(engine: Engine, *, model_name: str, api_key: str | None) -> Starlette:
    wrapper = WrapperApp(engine, model_name=model_name, api_key=api_key)

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, oa.ApiError)
        return JSONResponse(exc.body(), status_code=exc.status)

    async def not_found(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        return JSONResponse(oa.ApiError(status, f"{request.method} {request.url.path}: {exc}").body(), status_code=status)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(engine.close)

    routes = [
        Route("/v1/completions", wrapper.completions, methods=["POST"]),
        Route("/v1/chat/completions", wrapper.chat, methods=["POST"]),
        Route("/v1/models", wrapper.models, methods=["GET"]),
        Route("/health", wrapper.health, methods=["GET"]),
        Route("/metrics", wrapper.metrics, methods=["GET"]),
    ]
    return Starlette(
        routes=routes,
        exception_handlers={oa.ApiError: api_error, 404: not_found, 405: not_found},
        lifespan=lifespan,
    )
