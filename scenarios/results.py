"""The results directory: one file pair per finished point, written the moment the point ends.

Layout::

    RESULTS/scenario.json              the resolved scenario (what was asked for)
    RESULTS/points/<point_id>.json     the load generator's RunResult (histograms included)
    RESULTS/points/<point_id>.hlog     the same histograms as an HdrHistogram log (format 1.2)
    RESULTS/points/<point_id>.requests.jsonl   one line per request, with ``save_requests`` / --save-requests
    RESULTS/points/<point_id>.point.json   what the point was (server, settings, status), written last

A point counts as finished only when its ``.point.json`` exists, and both files are replaced atomically, so a
crash or SIGKILL at any moment leaves either a whole point or none. A rerun skips finished points; failed ones
(a server that crashed) are measured again.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from hpload.errors import HploadError
from hpload.loadgen.vocabulary import Summary

POINT_SUFFIX = ".point.json"


def write_json_atomic(path: Path, data: Any) -> None:
    try:
        _write_json_atomic(path, data)
    except OSError as err:
        # A full disk or a read-only directory is the user's to fix: one line, not a traceback.
        raise HploadError(f"results {path}: cannot write it ({err.strerror or err}); fix: free space on that disk "
                          "or choose another results directory (--results DIR)") from None


def _write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=1, sort_keys=True, default=str)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class PointRecord:
    """One finished (or failed) point as the directory holds it."""

    point_id: str
    label: str
    kind: str
    status: str  # "ok" | "failed"
    settings: dict[str, Any] = field(default_factory=dict)
    server: dict[str, Any] = field(default_factory=dict)
    summary: Summary = field(default_factory=lambda: Summary())
    error: str | None = None
    repeat: int = 0
    source: str = "run"  # "run" (a sweep point) or "tune" (a trial)
    result_file: str | None = None  # relative to the results directory
    warnings: list[str] = field(default_factory=list)  # the run's own (client bottleneck, TTFT gap, overflows, ...)
    path: Path | None = None  # where this record was read from

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return {
            "point_id": self.point_id,
            "label": self.label,
            "kind": self.kind,
            "status": self.status,
            "settings": self.settings,
            "server": self.server,
            "summary": self.summary,
            "error": self.error,
            "repeat": self.repeat,
            "source": self.source,
            "result_file": self.result_file,
            "warnings": self.warnings,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any], path: Path | None = None) -> PointRecord:
        return cls(
            point_id=str(raw["point_id"]),
            label=str(raw.get("label", "")),
            kind=str(raw.get("kind", "")),
            status=str(raw.get("status", "ok")),
            settings=dict(raw.get("settings") or {}),
            server=dict(raw.get("server") or {}),
            summary=cast(Summary, dict(raw.get("summary") or {})),
            error=raw.get("error"),
            repeat=int(raw.get("repeat", 0)),
            source=str(raw.get("source", "run")),
            result_file=raw.get("result_file"),
            warnings=[str(w) for w in raw.get("warnings") or []],
            path=path,
        )


class ResultStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.points_dir = self.root / "points"

    def prepare(self, scenario_dump: dict[str, Any]) -> None:
        self.points_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.root / "scenario.json", scenario_dump)

    def result_path(self, point_id: str) -> Path:
        return self.points_dir / f"{point_id}.json"

    def requests_path(self, point_id: str) -> Path:
        return self.points_dir / f"{point_id}.requests.jsonl"

    def hdr_log_path(self, point_id: str) -> Path:
        return self.points_dir / f"{point_id}.hlog"

    def record_path(self, point_id: str) -> Path:
        return self.points_dir / f"{point_id}{POINT_SUFFIX}"

    def save(self, record: PointRecord, result: Any | None = None) -> PointRecord:
        """The result first, then the record that marks the point finished."""
        if result is not None:
            result.save(self.result_path(record.point_id))
            # The same histograms in HdrHistogram's own log format, which HdrHistogram's tools read as they are.
            result.save_hdr_log(self.hdr_log_path(record.point_id))
            record.result_file = str(self.result_path(record.point_id).relative_to(self.root))
        write_json_atomic(self.record_path(record.point_id), record.to_dict())
        record.path = self.record_path(record.point_id)
        return record

    def get(self, point_id: str) -> PointRecord | None:
        path = self.record_path(point_id)
        if not path.is_file():
            return None
        return _read_record(path)

    def finished(self, point_id: str) -> bool:
        record = self.get(point_id)
        return record is not None and record.ok

    def records(self) -> list[PointRecord]:
        if not self.points_dir.is_dir():
            return []
        out = [_read_record(p) for p in sorted(self.points_dir.glob(f"*{POINT_SUFFIX}"))]
        return [r for r in out if r is not None]

    def load_result(self, record: PointRecord) -> Any:
        from hpload.loadgen.result import RunResult

        if not record.result_file:
            raise HploadError(f"point {record.point_id}: no result file (status {record.status})")
        return RunResult.load(self.root / record.result_file)

    def scenario_dump(self) -> dict[str, Any]:
        path = self.root / "scenario.json"
        if not path.is_file():
            return {}
        return dict(json.loads(path.read_text()))


def _read_record(path: Path) -> PointRecord | None:
    try:
        return PointRecord.from_dict(json.loads(path.read_text()), path)
    except (OSError, ValueError, KeyError):
        return None  # an unreadable record means an unfinished point: it is measured again


def open_results(path: str | Path) -> ResultStore:
    """A results directory given on the command line; a clear error when it is not one."""
    store = ResultStore(path)
    if not store.points_dir.is_dir():
        raise HploadError(f"results {path}: not a results directory (no points/ inside); fix: give the directory "
                          "that 'hpload run' or 'hpload tune' printed")
    return store
