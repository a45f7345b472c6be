"""The SSE decoder gives the same events however the byte stream is split (every one- and two-cut split)."""

from __future__ import annotations

import pytest

from hpload.loadgen.sse import SSEDecoder, SSEEvent


def decode_split(data: bytes, cuts: list[int]) -> list[SSEEvent]:
    dec = SSEDecoder()
    events: list[SSEEvent] = []
    prev = 0
    for cut in [*cuts, len(data)]:
        events += dec.feed(data[prev:cut])
        prev = cut
    return events


CASES = [
    # (stream, expected (event, data) pairs) -- examples from the WHATWG spec plus what LLM servers send
    (b"data: YHOO\ndata: +2\ndata: 10\n\n", [("message", "YHOO\n+2\n10")]),
    (b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n\n",
     [("message", "first event"), ("message", "second event"), ("message", " third event")]),
    (b"data\n\ndata\ndata\n\ndata:", [("message", ""), ("message", "\n")]),
    (b"data:test\r\n\r\ndata: two\r\rdata: three\n\n", [("message", "test"), ("message", "two"), ("message", "three")]),
    (b"event: error\ndata: {\"error\": \"boom\"}\n\n", [("error", '{"error": "boom"}')]),
    (b'data: {"choices":[{"text":" \xc3\xa9"}]}\n\ndata: [DONE]\n\n',
     [("message", '{"choices":[{"text":" \u00e9"}]}'), ("message", "[DONE]")]),
    (b"retry: 100\nfield-without-colon\ndata: x\r\n\r\n", [("message", "x")]),
]  # fmt: skip


@pytest.mark.parametrize(("stream", "expected"), CASES)
def test_every_single_split_gives_the_same_events(stream: bytes, expected: list[tuple[str, str]]) -> None:
    whole = [(e.event, e.data) for e in decode_split(stream, [])]
    assert whole == expected
    for cut in range(len(stream) + 1):
        assert [(e.event, e.data) for e in decode_split(stream, [cut])] == expected, f"split at {cut}"


@pytest.mark.parametrize(("stream", "expected"), CASES[:4])
def test_every_double_split_gives_the_same_events(stream: bytes, expected: list[tuple[str, str]]) -> None:
    for a in range(len(stream) + 1):
        for b in range(a, len(stream) + 1):
            assert [(e.event, e.data) for e in decode_split(stream, [a, b])] == expected, f"splits at {a},{b}"


def test_byte_at_a_time_with_crlf_and_lone_cr() -> None:
    stream = b"data: a\r\n\r\ndata: b\r\rdata: c\n\n"
    dec = SSEDecoder()
    got = [e.data for i in range(len(stream)) for e in dec.feed(stream[i : i + 1])]
    assert got == ["a", "b", "c"]


def test_incomplete_event_is_not_dispatched() -> None:
    dec = SSEDecoder()
    assert dec.feed(b"data: partial\n") == []
    assert dec.close() == []
    assert dec.feed(b"data: next\n\n") == [SSEEvent("next")]


def test_id_and_retry_fields() -> None:
    events = decode_split(b"id: 7\nretry: 250\ndata: x\n\n", [3])
    assert events == [SSEEvent("x", "message", "7", 250)]


def test_random_streams_with_mixed_line_endings_and_random_splits() -> None:
    """Events built from random fields, each line ending picked from CRLF/LF/CR, fed in random pieces."""
    import random

    rng = random.Random(1234)
    for _ in range(300):
        expected: list[tuple[str, str]] = []
        stream = b""
        for _ in range(rng.randint(1, 6)):
            eol = rng.choice([b"\n", b"\r\n", b"\r"])
            lines = [b": comment"] if rng.random() < 0.2 else []
            event = rng.choice(["", "error", "update"])
            if event:
                lines.append(b"event: " + event.encode())
            datas = [rng.choice(["", "x", "{\"choices\": []}", "[DONE]", "a b:c"]) for _ in range(rng.randint(1, 3))]
            lines += [b"data: " + d.encode() for d in datas]
            rng.shuffle(lines)
            stream += b"".join(line + eol for line in lines) + eol
            in_order = [line[6:].decode() for line in lines if line.startswith(b"data: ")]
            expected.append((event or "message", "\n".join(in_order)))
        cuts = sorted(rng.sample(range(len(stream) + 1), k=min(len(stream), rng.randint(0, 8))))
        got = [(e.event, e.data) for e in decode_split(stream, cuts)]
        assert got == expected, (stream, cuts)
