"""Known chunk patterns for the echo server (``--chunks NAME``), so golden tests can hold the load generator's token
counts and timings to exactly what the server sent.

Real servers do not send one token per chunk: vLLM flushes several tokens in one chunk when its front end falls
behind, sends a chunk with empty text while its detokenizer holds back half a UTF-8 character (still a token), opens
a chat stream with a role-only chunk that carries no token, and ends with a usage-only chunk (or none, when usage is
not asked). Peers shipped counting bugs on exactly these in 2026 (a re-counted start token halved ITL; a bundled
first chunk inflated tokens/s). Each pattern here is a plan of timed writes: write ``j`` goes out at
``arrival + ttft + j * itl`` (the same absolute schedule as the plain stream), and the plan says how many tokens
each write carries, so a test can tell which traced write times are token arrivals.

- ``multi``: tokens grouped 1, 3, 2, 1, 3, 2, ... per chunk;
- ``empty``: every third token's chunk has empty text;
- ``role``: chat streams open with a role-only chunk (its own write, no token), as vLLM's chat server does;
- ``usage-last``: the usage chunk and ``[DONE]`` in a write of their own after the last token;
- ``no-usage``: no usage chunk even when asked;
- ``mixed``: all of the above at once.

With ``return_token_ids`` in the request (vLLM's extension) each token-bearing chunk lists its token ids (1, 2, ...).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

PATTERNS = ("plain", "multi", "empty", "role", "usage-last", "no-usage", "mixed")
_GROUPS = (1, 3, 2)


@dataclass(frozen=True)
class Write:
    tokens: int  # tokens this write carries (0: role-only, usage-only)
    events: tuple[dict[str, Any], ...]  # SSE JSON payloads, in order
    done: bool = False  # ends with [DONE]


def plan(pattern: str, chat: bool, n: int, include_usage: bool, token_ids: bool, prompt_tokens: int = 0,
         model: str = "echo") -> list[Write]:  # fmt: skip
    """The writes of one streamed reply of ``n`` tokens under ``pattern``."""
    has = {pattern} if pattern != "mixed" else set(PATTERNS)
    groups: list[int] = []
    left = n
    k = 0
    while left > 0:
        size = min(_GROUPS[k % len(_GROUPS)], left) if "multi" in has else 1
        groups.append(size)
        left -= size
        k += 1
    head: dict[str, Any] = {"id": "echo-1", "object": "chat.completion.chunk" if chat else "text_completion",
                            "created": 0, "model": model}  # fmt: skip
    writes: list[Write] = []
    if chat and "role" in has:
        writes.append(Write(0, ({**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                      "finish_reason": None}]},)))  # fmt: skip
    next_id = 1
    for g, size in enumerate(groups):
        empty = "empty" in has and g % 3 == 2
        text = "" if empty else " x" * size
        final = g == len(groups) - 1
        choice: dict[str, Any] = {"index": 0, "finish_reason": "length" if final else None}
        if chat:
            choice["delta"] = {"content": text}
        else:
            choice["text"] = text
        if token_ids:
            choice["token_ids"] = list(range(next_id, next_id + size))
        next_id += size
        writes.append(Write(size, ({**head, "choices": [choice]},)))
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": n, "total_tokens": prompt_tokens + n}
    usage_event = {**head, "choices": [], "usage": usage}
    if include_usage and "no-usage" not in has:
        if "usage-last" in has:
            writes.append(Write(0, (usage_event,), done=True))
        else:
            last = writes[-1]
            writes[-1] = Write(last.tokens, (*last.events, usage_event), done=True)
    else:
        last = writes[-1]
        writes[-1] = Write(last.tokens, last.events, done=True)
    return writes


def encode(write: Write) -> bytes:
    body = b"".join(b"data: " + json.dumps(e, separators=(",", ":")).encode() + b"\n\n" for e in write.events)
    if write.done:
        body += b"data: [DONE]\n\n"
    return body


def payloads(writes: list[Write], chunk: Any) -> list[bytes]:
    """A plan's writes as the HTTP chunks a stream sends (``chunk`` frames one), the last one closing the body."""
    out = [chunk(encode(w)) for w in writes]
    out[-1] += b"0\r\n\r\n"
    return out
