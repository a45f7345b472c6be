"""Read a scenario file: TOML -> overrides -> strict model, with errors that name the file, line and field.

Pydantic reports where a problem sits as a path (``servers.0.vllm.max_num_seq``); people fix files by line. The
TOML text is scanned once for the line of every table header and key, and each error's path is matched to the
longest known prefix. ``--set load.concurrency=16`` edits the parsed tables before validation, so an override is
checked exactly like the file.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from hpload.errors import HploadError
from hpload.scenarios.schema import Scenario
from hpload.servers.kinds import KINDS

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"^\s*((?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*'))*)\s*=")
_PATH_IN_MESSAGE = re.compile(r"^\s*([A-Za-z_][\w.\[\]-]*)\s*[:=]")


class ScenarioError(HploadError):
    """Every problem found in one scenario file, one line each (``str()`` joins them)."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


@dataclass
class LoadedScenario:
    scenario: Scenario
    path: Path | None  # None for the built-in quickstart or a scenario built from flags
    text: str


def _split_key(text: str) -> list[str]:
    parts = re.findall(r"\"[^\"]*\"|'[^']*'|[^.\s]+", text)
    return [p[1:-1] if p[:1] in "\"'" else p for p in parts]


def key_lines(text: str) -> dict[tuple[str | int, ...], int]:
    """Line number (1-based) of every table header and key, keyed by its path; arrays of tables get indexes."""
    lines: dict[tuple[str | int, ...], int] = {}
    table: tuple[str | int, ...] = ()
    array_counts: dict[tuple[str | int, ...], int] = {}
    in_multiline = False
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if in_multiline:
            # Inside a multi-line array or string: no keys start here.
            if stripped.endswith("]") or stripped.endswith('"""'):
                in_multiline = False
            continue
        if not stripped or stripped.startswith("#"):
            continue
        header = _HEADER.match(line)
        if header and not _KEY.match(line):
            path = tuple(_split_key(header[2]))
            if header[1] == "[[":
                index = array_counts.get(path, -1) + 1
                array_counts[path] = index
                table = (*path, index)
            else:
                table = _resolve_arrays(path, array_counts)
            lines.setdefault(table, number)
            continue
        key = _KEY.match(line)
        if key:
            full = (*table, *_split_key(key[1]))
            lines.setdefault(full, number)
            rest = line[key.end() :].strip()
            if (rest.startswith("[") and not rest.rstrip().endswith("]")) or rest.startswith('"""') and rest.count('"""') == 1:
                in_multiline = True
    return lines


def _resolve_arrays(path: tuple[str, ...], arrays: dict[tuple[str | int, ...], int]) -> tuple[str | int, ...]:
    """``[servers.env]`` after ``[[servers]]`` belongs to the latest servers entry."""
    out: list[str | int] = []
    for part in path:
        out.append(part)
        if tuple(out) in arrays:
            out.append(arrays[tuple(out)])
    return tuple(out)


def line_of(loc: tuple[str | int, ...], lines: dict[tuple[str | int, ...], int], data: Any) -> int | None:
    """The line of the longest prefix of ``loc`` that the file names (discriminator tags are skipped)."""
    path: list[str | int] = []
    node = data
    best: int | None = lines.get(())
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        elif isinstance(node, dict) and isinstance(part, str):
            # A union's tag ("vllm" in servers.0.vllm.x) or a missing key: the line is the enclosing table's.
            if part in KINDS and "kind" in node:
                continue
            break
        else:
            break
        path.append(part)
        if tuple(path) in lines:
            best = lines[tuple(path)]
    return best


def format_loc(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in KINDS and out.startswith("servers["):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _problems(err: ValidationError, where: str, lines: dict[tuple[str | int, ...], int], data: Any) -> list[str]:
    out = []
    for item in err.errors():
        loc = tuple(item["loc"])
        message = str(item["msg"]).removeprefix("Value error, ")
        if not loc:
            # Cross-field checks name their field at the start of the message: use it to find the line.
            match = _PATH_IN_MESSAGE.match(message)
            if match:
                loc = tuple(int(p) if p.isdigit() else p for p in re.split(r"[.\[\]]+", match[1]) if p)
                message = message[match.end() :].strip()
        if item["type"] == "extra_forbidden":
            message = "unknown key; fix: remove it or correct the spelling"
        elif item["type"] == "missing":
            message = "required; fix: add it"
        line = line_of(loc, lines, data)
        at = f"{where}:{line}" if line else where
        out.append(f"{at}: {format_loc(loc)}: {message}")
    return out


def parse_value(text: str) -> Any:
    """A ``--set`` value as TOML reads it (16, 2.5, true, [1, 2], "x"); anything else is a plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """``a.b.c=value`` into the parsed tables; ``servers.<label or index>.field`` picks one server."""
    if "=" not in assignment:
        raise HploadError(f"--set {assignment}: no '='; fix: write --set table.field=value, e.g. load.concurrency=16")
    path_text, _, value_text = assignment.partition("=")
    path = _split_key(path_text.strip())
    if not path:
        raise HploadError(f"--set {assignment}: empty field path; fix: write --set load.concurrency=16")
    node: Any = data
    for i, part in enumerate(path[:-1]):
        if isinstance(node, list):
            node = _pick_server(node, part, assignment)
            continue
        nxt = node.get(part)
        if nxt is None:
            nxt = {}
            node[part] = nxt
        if not isinstance(nxt, dict | list):
            raise HploadError(f"--set {assignment}: {'.'.join(path[: i + 1])} is a value, not a table")
        node = nxt
    last = path[-1]
    value = parse_value(value_text.strip())
    if isinstance(node, list):
        # servers.field=value: every server gets it.
        for entry in node:
            entry[last] = value
    else:
        node[last] = value


def _pick_server(items: list[Any], key: str, assignment: str) -> Any:
    if key.isdigit() and int(key) < len(items):
        return items[int(key)]
    for entry in items:
        if isinstance(entry, dict) and entry.get("label", entry.get("kind")) == key:
            return entry
    labels = [str(e.get("label", e.get("kind"))) for e in items if isinstance(e, dict)]
    raise HploadError(f"--set {assignment}: no server '{key}'; fix: use an index or one of {', '.join(labels)}")


def shipped_dir() -> Path:
    return Path(str(resources.files("hpload.scenarios")))


def shipped_names() -> list[str]:
    return sorted(p.stem for p in shipped_dir().glob("*.toml"))


def resolve(name_or_path: str) -> Path:
    """A path to a file, or the bare name of a shipped scenario (``quickstart``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    # "quickstart", "quickstart.toml" and "scenarios/quickstart.toml" all find the shipped file from any directory.
    shipped = shipped_dir() / f"{path.name.removesuffix('.toml')}.toml"
    if shipped.is_file():
        return shipped
    raise HploadError(
        f"scenario {name_or_path}: no such file or shipped scenario; fix: give a path or one of {', '.join(shipped_names())}"
    )


def load_text(
    text: str, where: str, overrides: list[str] | None = None, edit: Callable[[dict[str, Any]], None] | None = None
) -> Scenario:
    """Parse and validate; ``edit`` changes the parsed tables first (command-line flags), then ``--set``s apply."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        match = re.search(r"\(at line (\d+), column (\d+)\)", str(err))
        at = f"{where}:{match[1]}" if match else where
        raise ScenarioError([f"{at}: TOML syntax: {str(err).split(' (at line')[0]}; fix: correct the syntax"]) from err
    if edit is not None:
        edit(data)
    for assignment in overrides or []:
        apply_override(data, assignment)
    lines = key_lines(text)
    try:
        return Scenario.model_validate(data)
    except ValidationError as err:
        raise ScenarioError(_problems(err, where, lines, data)) from err


def load_scenario(
    name_or_path: str, overrides: list[str] | None = None, edit: Callable[[dict[str, Any]], None] | None = None
) -> LoadedScenario:
    path = resolve(name_or_path)
    try:
        text = path.read_text()
    except OSError as err:
        raise HploadError(f"scenario {path}: cannot read it ({err.strerror}); fix: check the path") from err
    return LoadedScenario(scenario=load_text(text, str(path), overrides, edit), path=path, text=text)
