"""Prompts of exact token lengths, built as token ids of the server's tokenizer.

On the completions endpoint a prompt is sent as a list of token ids (vLLM and the transformers wrapper take it as
is, adding no BOS), so the server's ``usage.prompt_tokens`` equals the asked length exactly. On the chat endpoint the
prompt must be text: the ids are decoded, and the chat template's added tokens are measured once with the model's
own template (``transformers``), so the expected count is the content's length plus that overhead.

Without a tokenizer (an attached server with no ``tokenizer_path``), a token is one common word, which is exact for
the echo server (it counts words) and roughly right elsewhere; no check is made then.

Blocks (Mooncake ``hash_ids``, shared prefixes) are token runs seeded by their id, so equal ids give equal tokens in
any request and any run with the same seed.
"""

from __future__ import annotations

import json
import random
from typing import Any

from hpload.loadgen.prepared import _WORDS, PreparedRequest, load_tokenizer, stream_and_sampling
from hpload.loadgen.specs import Target, WorkloadSpec


class PromptMaker:
    def __init__(self, spec: WorkloadSpec, target: Target) -> None:
        self.spec, self.target = spec, target
        self.tok: Any = load_tokenizer(target.tokenizer_path) if target.tokenizer_path else None
        if self.tok is not None:
            special = {i for i, t in self.tok.get_added_tokens_decoder().items() if t.special}
            self.pool = [i for i in range(self.tok.get_vocab_size()) if i not in special]
        else:
            self.pool = list(range(len(_WORDS)))
        self._hf: Any = None
        self.chat_overhead = self._chat_overhead() if spec.endpoint == "chat" else None
        self._blocks: dict[tuple[str, int], list[int]] = {}

    # ---- token runs ----
    def ids(self, n: int, rng: random.Random) -> list[int]:
        pool = self.pool
        return [pool[rng.randrange(len(pool))] for _ in range(n)]

    def block(self, key: int, size: int, kind: str = "hash") -> list[int]:
        """The ``size`` tokens of block ``key``: the same for the same key, seed and kind."""
        cached = self._blocks.get((kind, key))
        if cached is None or len(cached) < size:
            cached = self.ids(size, random.Random(f"{self.spec.seed}/{kind}/{key}/{size}"))
            self._blocks[(kind, key)] = cached
        return cached[:size]

    # ---- request bodies ----
    def request(self, ids: list[int], output_len: int | None, at_s: float | None = None) -> PreparedRequest:
        spec = self.spec
        body: dict[str, Any] = {"model": self.target.model, "max_tokens": int(output_len or spec.max_tokens)}
        expected: int | None = None
        if spec.endpoint == "chat":
            body["messages"] = [{"role": "user", "content": self._exact_text(ids)}]
            if self.chat_overhead is not None:
                expected = self._chat_count(body["messages"][0]["content"])
        elif self.tok is not None:
            body["prompt"] = ids
            expected = len(ids)
        else:
            body["prompt"] = self.text(ids)
        body.update(stream_and_sampling(spec))
        if (output_len is not None and spec.output_hold == "ignore_eos") or spec.ignore_eos:
            body["ignore_eos"] = True
        if output_len is not None and spec.output_hold == "min_tokens":
            body["min_tokens"] = int(output_len)
        elif spec.min_tokens is not None:
            body["min_tokens"] = spec.min_tokens
        if spec.return_token_ids:
            body["return_token_ids"] = True
        return PreparedRequest(json.dumps(body).encode(), expected, at_s, len(ids), output_len)

    def _exact_text(self, ids: list[int]) -> str:
        """Text that re-encodes to ``len(ids)`` tokens where a few trims or pads get there (decoding then encoding
        merges or splits some tokens)."""
        text = self.text(ids)
        if self.tok is None:
            return text
        want = len(ids)
        for k in range(4):
            got = self.tok.encode(text, add_special_tokens=False).ids
            if len(got) == want:
                break
            got = got[:want] if len(got) > want else got + ids[k : k + want - len(got)]
            text = self.tok.decode(got)
        return text

    def text(self, ids: list[int]) -> str:
        if self.tok is None:
            return " ".join(_WORDS[i % len(_WORDS)] for i in ids)
        return str(self.tok.decode(ids))

    def _chat_overhead(self) -> int | None:
        """Tokens the chat template adds around one user message, measured on a fixed text; None when there is no
        template to measure. Per request, ``_chat_count`` renders the real content, as vLLM and the wrapper do."""
        path = self.target.tokenizer_path
        if self.tok is None or path is None:
            return None
        try:
            from transformers import AutoTokenizer

            hf = AutoTokenizer.from_pretrained(path)
        except Exception:  # noqa: BLE001 -- a directory without a template or config: no check rather than a failed run
            return None
        if not getattr(hf, "chat_template", None):
            return None
        self._hf = hf
        content = "hello world"
        return self._chat_count(content) - len(self.tok.encode(content, add_special_tokens=False).ids)

    def _chat_count(self, content: str) -> int:
        text = self._hf.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                            tokenize=False)  # fmt: skip
        return len(self.tok.encode(text, add_special_tokens=False).ids)
