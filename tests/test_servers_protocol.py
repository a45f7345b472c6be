"""The wrapper's wire format with no server: request validation, incremental decoding, stop strings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpload.servers.hf import openai_api as oa
from hpload.servers.hf.app import IncrementalDetokenizer, StopMatcher


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (json.dumps({"model": "m", "prompt": "x", "max_tokens": -3}).encode(), "max_tokens"),
        (json.dumps({"model": "m", "prompt": "x", "temperature": "hot"}).encode(), "temperature"),
        (json.dumps({"prompt": "x"}).encode(), "model"),
        (json.dumps({"model": "m", "prompt": "x", "n": 2}).encode(), "n"),
    ],
)
def test_bad_completion_requests_are_400_naming_the_field(body: bytes, param: str | None) -> None:
    with pytest.raises(oa.ApiError) as caught:
        oa.parse_request(body, "completion")
    assert caught.value.status == 400
    assert caught.value.param == param
    assert caught.value.body()["error"]["type"] == "invalid_request_error"


def test_chat_request_reads_text_parts_and_limits() -> None:
    req = oa.parse_request(
        json.dumps({"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                    "max_completion_tokens": 5, "stream": True, "stream_options": {"include_usage": True},
                    "unknown_extension": 1}).encode(),
        "chat",
    )
    assert isinstance(req, oa.ChatRequest)
    assert req.messages[0].text() == "hi" and req.output_limit() == 5 and req.include_usage


def test_detokenizer_output_equals_whole_decode(tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    text = "déjà vu: naïve café ☕ — def f(x): return x ** 2\n"
    ids = tok(text)["input_ids"]
    detok = IncrementalDetokenizer(tok)
    pieces = [detok.add([i]) for i in ids]
    assert "".join(pieces) == tok.decode(ids, skip_special_tokens=True)
    assert all("\ufffd" not in p for p in pieces)  # a split multi-byte character is held back, never sent broken


def test_stop_matcher_across_pieces_never_sends_the_stop() -> None:
    matcher = StopMatcher(["STOP"])
    sent = [matcher.feed(p) for p in ["abc S", "T", "OP and more"]]
    assert "".join(sent) == "abc " and matcher.hit
    partial = StopMatcher(["xyz"])
    sent = [partial.feed(p) for p in ["ax", "y", "b"]]
    assert "".join(sent) + partial.flush() == "axyb" and not partial.hit


@pytest.mark.parametrize("kind", ["completion", "chat"])
def test_chunk_encoder_matches_the_plain_chunk(kind: str) -> None:
    enc = oa.ChunkEncoder(kind, "id-1", "m", 123)  # type: ignore[arg-type]
    for text, finish, role in [('he said "hi"\n\\', None, False), ("", None, False), ("x", "length", False),
                               ("y", None, True)]:
        line = enc.encode(text, finish, role=role)
        assert line.startswith(b"data: ") and line.endswith(b"\n\n")
        assert json.loads(line[6:]) == oa.chunk(kind, "id-1", "m", 123, text, finish, role=role)  # type: ignore[arg-type]
