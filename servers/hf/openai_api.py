"""The OpenAI wire format the transformers wrapper speaks: request validation, error bodies and response chunks.

No I/O and no torch here, so the protocol is testable without a model. Unknown request fields are accepted (OpenAI
clients send many we have no use for); known fields are validated and a bad one gets a 400 naming it.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class ApiError(Exception):
    """A request problem answered as an OpenAI-style error body with a 4xx status."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        kind = {401: "authentication_error", 404: "not_found_error"}.get(self.status, "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class _Common(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    min_tokens: int = Field(default=0, ge=0)
    ignore_eos: bool = False
    temperature: float = Field(default=1.0, ge=0, le=10)
    top_p: float = Field(default=1.0, gt=0, le=1)
    seed: int | None = Field(default=None, ge=-(2**63), le=2**64 - 1)  # what torch.Generator.manual_seed takes
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=1)

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else [s for s in self.stop if s]

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_Common):
    prompt: str | list[int] | list[str] | list[list[int]]

    def single_prompt(self) -> str | list[int]:
        prompt = self.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
            if len(prompt) != 1:
                raise ApiError(400, "prompt: one prompt per request (a batch of prompts is not supported)", param="prompt")
            return prompt[0]  # type: ignore[return-value]
        return prompt  # type: ignore[return-value]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(str(part.get("text", "")) for part in self.content if part.get("type") == "text")


class ChatRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)

    def output_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


def parse_request(raw: bytes, kind: Literal["completion", "chat"]) -> CompletionRequest | ChatRequest:
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ApiError(400, f"body: not valid JSON ({type(err).__name__}: {err})") from None
    if not isinstance(data, dict):
        raise ApiError(400, "body: expected a JSON object")
    model_cls: type[CompletionRequest | ChatRequest] = CompletionRequest if kind == "completion" else ChatRequest
    try:
        return model_cls.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "body"
        raise ApiError(400, f"{field}: {first['msg']}", param=field) from None


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chunk(
    kind: Literal["completion", "chat"],
    rid: str,
    model: str,
    created: int,
    text: str | None,
    finish_reason: str | None = None,
    *,
    role: bool = False,
) -> dict[str, Any]:
    """One streamed chunk. ``text`` None with no finish reason gives the usage trailer's empty choices."""
    if kind == "completion":
        choice: dict[str, Any] = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
        obj = "text_completion"
    else:
        delta: dict[str, Any] = {"role": "assistant"} if role else {}
        if text is not None:
            delta["content"] = text
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        obj = "chat.completion.chunk"
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": [choice]}


class ChunkEncoder:
    """Pre-renders one stream's chunk JSON around a placeholder, so each mid-stream token costs one
    ``json.dumps`` of its text instead of a whole dict (the per-token path runs for every stream every step)."""

    _MARK = "\x00hpload\x00"

    def __init__(self, kind: Literal["completion", "chat"], rid: str, model: str, created: int) -> None:
        self.kind, self.rid, self.model, self.created = kind, rid, model, created
        rendered = json.dumps(chunk(kind, rid, model, created, self._MARK), separators=(",", ":"))
        self._head, self._tail = rendered.split(json.dumps(self._MARK))

    def encode(self, text: str, finish_reason: str | None = None, *, role: bool = False) -> bytes:
        if finish_reason is None and not role:
            return f"data: {self._head}{json.dumps(text)}{self._tail}\n\n".encode()
        return sse(chunk(self.kind, self.rid, self.model, self.created, text, finish_reason, role=role))


def usage_chunk(kind: Literal["completion", "chat"], rid: str, model: str, created: int, use: dict[str, int]) -> dict:
    obj = "text_completion" if kind == "completion" else "chat.completion.chunk"
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": [], "usage": use}


def full_response(
    kind: Literal["completion", "chat"], rid: str, model: str, text: str, finish_reason: str, use: dict[str, int]
) -> dict[str, Any]:
    created = int(time.time())
    if kind == "completion":
        choice: dict[str, Any] = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        obj = "text_completion"
    else:
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": None,
            "finish_reason": finish_reason,
        }
        obj = "chat.completion"
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": [choice], "usage": use}


def sse(data: dict[str, Any] | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()
