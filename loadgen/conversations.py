"""Multi-turn conversations to replay (read from ShareGPT-style JSON/JSONL or generated), built before the run; the
run that sends them turn by turn is :class:`hpload.loadgen.sessions.SessionRun`. Apart from it so building requests
never imports the load run (tests/test_layering.py: no import cycle). The rules (a ShareGPT row is one turn's NEW
text, recorded replies dropped) are in sessions.py's docstring and docs/workloads.md.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpload.errors import HploadError
from hpload.loadgen.prepared import PreparedRequest
from hpload.loadgen.specs import Target, WorkloadSpec
from hpload.loadgen.traces import RequestSet


@dataclass(frozen=True, slots=True)
class Conversation:
    user_turns: tuple[str, ...]
    user_tokens: tuple[int | None, ...]


class SessionSet(RequestSet):
    def __init__(self, conversations: list[Conversation]) -> None:
        # One placeholder per conversation: LoadRun wants a non-empty request list; bodies are built per turn.
        super().__init__([PreparedRequest(b"", None) for _ in conversations])
        self.conversations = conversations


def read_sharegpt(path_s: str) -> list[Conversation]:
    path = Path(path_s)
    try:
        text = path.read_text()
    except OSError as err:
        raise HploadError(f"workload.path: cannot read {path} ({err.strerror}); fix: give an existing file") from err
    try:
        rows = json.loads(text) if text.lstrip().startswith("[") else None
    except ValueError as err:
        raise HploadError(f"workload.path: {path} is not JSON ({err}); fix: a ShareGPT JSON list") from err
    numbered: list[tuple[int, Any]]
    if rows is None:  # JSONL: one conversation per line
        numbered = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    numbered.append((n, json.loads(line)))
                except ValueError as err:
                    raise HploadError(f"workload.path: {path} line {n}, field '(line)': not JSON ({err}); fix: one"
                                      " object per line") from err  # fmt: skip
    else:
        numbered = [(i + 1, r) for i, r in enumerate(rows)]
    out = []
    for n, row in numbered:
        where = f"workload.path: {path} {'line' if rows is None else 'entry'} {n}, field 'conversations'"
        turns = row.get("conversations") if isinstance(row, dict) else None
        if not isinstance(turns, list):
            raise HploadError(f"{where}: missing or not a list; fix: a list of {{from, value}} objects")
        users = []
        for t in turns:
            if not isinstance(t, dict) or not isinstance(t.get("value"), str) or "from" not in t:
                raise HploadError(f"{where}: a turn without 'from' and a text 'value'; fix: {{\"from\": \"human\", "
                                  "\"value\": \"...\"}")  # fmt: skip
            if t["from"] in ("human", "user"):
                users.append(t["value"])
        if users:
            out.append(Conversation(tuple(users), (None,) * len(users)))
    if not out:
        raise HploadError(f"workload.path: {path} has no conversation with a human turn; fix: a ShareGPT file")
    return out


def build_sessions(spec: WorkloadSpec, target: Target) -> SessionSet:
    if spec.endpoint != "chat":
        raise HploadError("workload.endpoint: sessions carry a chat history; fix: set endpoint = 'chat'")
    if spec.path:
        return SessionSet(read_sharegpt(spec.path))
    from hpload.loadgen.prompts import PromptMaker

    maker = PromptMaker(spec, target)
    rng = random.Random(spec.seed)
    convs = []
    for _ in range(spec.num_prompts):
        lens = (spec.input_dist.draw(rng, spec.session_turns, "workload.input_dist") if spec.input_dist
                else [spec.turn_len] * spec.session_turns)  # fmt: skip
        texts = tuple(maker._exact_text(maker.ids(n, rng)) for n in lens)
        convs.append(Conversation(texts, tuple(lens)))
    return SessionSet(convs)
