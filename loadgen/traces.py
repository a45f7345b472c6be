"""Trace replay: files of timestamped requests with lengths, read into rows and built into exact-length requests.

Formats (``format = "auto"`` picks one from the file's first line; docs/workloads.md has the full table):

- ``mooncake``: JSONL, ``timestamp`` (ms from the trace's start), ``input_length``, ``output_length``, ``hash_ids``
  (each id one block of ``block_tokens`` = 512 tokens; equal ids are equal blocks, so shared prefixes come back).
- ``azure``: the Azure LLM inference trace CSV: ``TIMESTAMP`` (a date-time), ``ContextTokens``, ``GeneratedTokens``.
- ``burstgpt``: BurstGPT's CSV: ``Timestamp`` (seconds from the trace's start), ``Request tokens``,
  ``Response tokens`` (0 marks a failed request in the original log: such rows are skipped and counted).
- ``hpload``: JSONL, ``t_s`` (seconds), ``input_len``, ``output_len``, optional ``hash_ids``.

Every format is sorted by time (stably, so equal times keep the file's order; duplicates are separate requests, as
the trace logged them), shifted so the first row kept by ``trace_offset_s``/``trace_window_s`` is at 0, then scaled
by the load's ``time_scale`` or warped to its ``rate``.
"""

from __future__ import annotations

import csv
import json
import math
import random
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from hpload.errors import HploadError
from hpload.loadgen.prepared import PreparedRequest
from hpload.loadgen.schedule import send_offsets
from hpload.loadgen.specs import LoadSpec, Target, WorkloadSpec

FORMATS = ("mooncake", "azure", "burstgpt", "hpload")


@dataclass(frozen=True, slots=True)
class TraceRow:
    t_s: float
    input_len: int
    output_len: int
    hash_ids: tuple[int, ...] = ()
    line: int = 0


class RequestSet(list[PreparedRequest]):
    """The requests of a run, with what building them found (counts of skipped or clipped rows, lengths)."""

    def __init__(self, items: list[PreparedRequest] | None = None) -> None:
        super().__init__(items or [])
        self.stats: dict[str, Any] = {}
        self.warnings: list[str] = []


def _fail(path: Path, line: int, field: str, why: str, fix: str) -> HploadError:
    return HploadError(f"workload.path: {path} line {line}, field '{field}': {why}; fix: {fix}")


def detect_format(path: Path) -> str:
    try:
        with path.open(newline="") as fh:
            first = next((ln for ln in fh if ln.strip()), "")
    except OSError as err:
        raise HploadError(f"workload.path: cannot read {path} ({err.strerror}); fix: give an existing file") from err
    head = first.strip()
    if head.startswith("{"):
        try:
            obj = json.loads(head)
        except ValueError as err:
            raise _fail(path, 1, "(line)", f"not JSON ({err})", "one JSON object per line") from err
        if "input_len" in obj or "t_s" in obj:
            return "hpload"
        if "input_length" in obj or "hash_ids" in obj:
            return "mooncake"
    cols = [c.strip() for c in head.split(",")]
    if "ContextTokens" in cols:
        return "azure"
    if "Request tokens" in cols:
        return "burstgpt"
    raise HploadError(
        f"workload.format: cannot tell the format of {path} from its first line; fix: set format to one of "
        + ", ".join(FORMATS)
    )


def _int(path: Path, line: int, row: dict[str, Any], field: str, minimum: int) -> int:
    value = row.get(field)
    if value is None or value == "":
        raise _fail(path, line, field, "missing", f"every row needs {field}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise _fail(path, line, field, f"'{str(value)[:40]}' is not a number", "write an integer") from None
    if not math.isfinite(number) or number != int(number) or number < minimum:
        raise _fail(path, line, field, f"{value} is not an integer >= {minimum}", f"an integer >= {minimum}")
    return int(number)


def _float(path: Path, line: int, row: dict[str, Any], field: str) -> float:
    value = row.get(field)
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise _fail(path, line, field, f"'{str(value)[:40]}' is not a number", "write a number") from None
    if not math.isfinite(number) or number < 0:
        raise _fail(path, line, field, f"{value} is not a time >= 0", "write a finite time >= 0")
    return number


def _date_s(path: Path, line: int, value: str | None) -> float:
    # The Azure trace writes 7 fractional digits ("2023-11-16 18:15:46.6805900"); datetime takes at most 6.
    text = (value or "").strip()
    if "." in text:
        whole, frac = text.split(".", 1)
        digits = "".join(c for c in frac if c.isdigit())
        text = f"{whole}.{(digits + '000000')[:6]}{frac[len(digits) :]}"
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise _fail(
            path, line, "TIMESTAMP", f"'{text[:40]}' is not a date-time", "write YYYY-MM-DD HH:MM:SS[.f]"
        ) from None


def read_trace(path_s: str, fmt: str = "auto") -> tuple[list[TraceRow], dict[str, int]]:
    """(rows sorted by time, counts of rows skipped by kind). Malformed rows raise, naming file, line and field."""
    path = Path(path_s)
    if fmt == "auto":
        fmt = detect_format(path)
    skipped: dict[str, int] = {}
    rows: list[TraceRow] = []
    try:
        if fmt in ("mooncake", "hpload"):
            with path.open() as fh:
                for n, text in enumerate(fh, 1):
                    if not text.strip():
                        continue
                    try:
                        obj = json.loads(text)
                    except ValueError as err:
                        raise _fail(path, n, "(line)", f"not JSON ({err})", "one JSON object per line") from err
                    if not isinstance(obj, dict):
                        raise _fail(path, n, "(line)", "not a JSON object", "one JSON object per line")
                    rows.append(_json_row(path, n, obj, fmt))
        else:
            with path.open(newline="") as fh:
                reader = csv.DictReader(fh)
                for n, rec in enumerate(reader, 2):
                    row = _csv_row(path, n, rec, fmt)
                    if row is None:
                        skipped["zero_output"] = skipped.get("zero_output", 0) + 1
                    else:
                        rows.append(row)
    except OSError as err:
        raise HploadError(f"workload.path: cannot read {path} ({err.strerror}); fix: give an existing file") from err
    if not rows:
        raise HploadError(f"workload.path: {path} holds no requests; fix: give a trace with at least one row")
    rows.sort(key=lambda r: r.t_s)  # stable: rows at equal times keep the file's order
    return rows, skipped


def _json_row(path: Path, n: int, obj: dict[str, Any], fmt: str) -> TraceRow:
    if fmt == "mooncake":
        t_s = _float(path, n, obj, "timestamp") / 1000
        names = ("input_length", "output_length")
    else:
        t_s = _float(path, n, obj, "t_s")
        names = ("input_len", "output_len")
    hashes = obj.get("hash_ids", [])
    if not isinstance(hashes, list) or not all(isinstance(h, int) and not isinstance(h, bool) for h in hashes):
        raise _fail(path, n, "hash_ids", "not a list of integers", "write hash_ids as [1, 2, 3]")
    return TraceRow(t_s, _int(path, n, obj, names[0], 1), _int(path, n, obj, names[1], 1), tuple(hashes), n)


def _csv_row(path: Path, n: int, rec: dict[str, Any], fmt: str) -> TraceRow | None:
    if fmt == "azure":
        t_s = _date_s(path, n, rec.get("TIMESTAMP"))
        names = ("ContextTokens", "GeneratedTokens")
    else:
        t_s = _float(path, n, rec, "Timestamp")
        names = ("Request tokens", "Response tokens")
    out = _int(path, n, rec, names[1], 0)
    if out == 0:
        return None  # a failed request in the original log: nothing to reproduce
    return TraceRow(t_s, _int(path, n, rec, names[0], 1), out, (), n)


def select(rows: list[TraceRow], spec: WorkloadSpec) -> list[TraceRow]:
    """The window ``[offset, offset + window)`` of the trace, measured from its first row, shifted to start at 0."""
    t0 = rows[0].t_s + spec.trace_offset_s
    end = t0 + spec.trace_window_s if spec.trace_window_s is not None else math.inf
    kept = [r for r in rows if t0 <= r.t_s < end]
    if not kept:
        raise HploadError(
            f"workload.trace_offset_s: no row of the trace falls in [{spec.trace_offset_s:g}, "
            f"{spec.trace_offset_s + (spec.trace_window_s or math.inf):g}) s; fix: a smaller offset or a wider window"
        )
    first = kept[0].t_s
    return [TraceRow(r.t_s - first, r.input_len, r.output_len, r.hash_ids, r.line) for r in kept]


def retime(times_s: list[float], load: LoadSpec) -> list[float]:
    """Send offsets: the trace's times times ``time_scale``, or warped so the mean rate is ``load.rate`` (every gap
    scaled alike, so the trace's burst shape is kept)."""
    if load.rate is not None and len(times_s) > 1 and times_s[-1] > 0:
        factor = (len(times_s) - 1) / times_s[-1] / load.rate
    else:
        factor = load.time_scale
    return [t * factor for t in times_s]


def server_context(target: Target) -> int | None:
    """The server's context length from ``/v1/models`` (vLLM reports ``max_model_len``), or None."""
    import httpx2 as httpx

    headers = {"Authorization": f"Bearer {target.api_key}"} if target.api_key else {}
    try:
        resp = httpx.get(target.base_url.rstrip("/") + "/v1/models", headers=headers, timeout=5.0)
        for model in resp.json().get("data", []):
            if model.get("id") == target.model and model.get("max_model_len"):
                return int(model["max_model_len"])
    except Exception:  # noqa: BLE001 -- an attached server without the route: lengths are not checked
        return None
    return None


def build_trace_requests(spec: WorkloadSpec, target: Target) -> RequestSet:
    """One request per kept row, at its trace time (the load's ``time_scale``/``rate`` apply at send time)."""
    from hpload.loadgen.prompts import PromptMaker

    rows, skipped = read_trace(spec.path or "", spec.format)
    rows = select(rows, spec)
    maker = PromptMaker(spec, target)
    context = spec.max_context or server_context(target)
    out = RequestSet()
    clipped = too_long = 0
    rng = random.Random(spec.seed)
    for row in rows:
        n_in, n_out = row.input_len, row.output_len
        if context is not None and n_in + n_out > context:
            if spec.too_long == "count":
                too_long += 1
                continue
            clipped += 1
            n_out = min(n_out, max(1, context // 4))
            n_in = max(1, min(n_in, context - n_out))
        ids: list[int] = []
        for h in row.hash_ids:
            if len(ids) >= n_in:
                break
            ids += maker.block(h, spec.block_tokens)
        ids = ids[:n_in] + maker.ids(n_in - len(ids), rng) if len(ids) < n_in else ids[:n_in]
        out.append(maker.request(ids, n_out, row.t_s))
    if too_long:
        skipped["too_long"] = too_long
        out.warnings.append(
            f"{too_long} trace rows longer than the server's context ({context} tokens) were not sent"
            " (workload.too_long = 'count'; 'clip' sends them shortened)"
        )
    if clipped:
        out.warnings.append(f"{clipped} trace rows longer than the server's context ({context} tokens) were clipped")
    if not out:
        raise HploadError(f"workload.path: every row of {spec.path} is longer than the server's context ({context});"
                          " fix: set too_long = 'clip' or give a shorter trace")  # fmt: skip
    out.stats = {
        "format": spec.format if spec.format != "auto" else detect_format(Path(spec.path or "")),
        "rows": len(out), "skipped": skipped, "clipped": clipped, "context": context,
        "chat_template_tokens": maker.chat_overhead,
    }  # fmt: skip
    return out


def replay_schedule(requests: list[PreparedRequest], load: LoadSpec) -> tuple[list[int], int]:
    """(send offsets in ns, leading warm-up count) for ``load.replay``: the requests' own times, cut by the
    load's duration and request count like any open-loop schedule."""
    horizon = load.warmup_s + load.duration_s if load.duration_s is not None else math.inf
    if any(req.at_s is None for req in requests):
        raise HploadError("load.replay: the workload's requests carry no times; fix: use source = 'trace'")
    return send_offsets(retime([req.at_s or 0.0 for req in requests], load), load, horizon)


def shared_prefix(spec: WorkloadSpec, target: Target) -> RequestSet:
    """``num_prompts`` requests; request i belongs to group ``i % prefix_groups``, whose ``prefix_len`` tokens it
    shares, then ``suffix_len`` tokens of its own. Groups interleave, so a cache must hold all G prefixes."""
    from hpload.loadgen.prompts import PromptMaker

    maker = PromptMaker(spec, target)
    rng = random.Random(spec.seed)
    n, g, p, s = spec.num_prompts, spec.prefix_groups, spec.prefix_len, spec.suffix_len
    outs = spec.output_dist.draw(random.Random(spec.seed + 1), n, "workload.output_dist") if spec.output_dist else None
    out = RequestSet()
    for i in range(n):
        # The salt keeps prefixes of one seed apart from any other run's, so a warm cache cannot serve them.
        ids = maker.block(i % g, p, f"prefix/{spec.seed}") + maker.ids(s, rng)
        out.append(maker.request(ids, outs[i] if outs else None))
    out.stats = {
        "prefix_groups": g, "prefix_len": p, "suffix_len": s, "requests": n,
        "ideal_hit_fraction": spec.ideal_hit_fraction(),
    }  # fmt: skip
    return out
