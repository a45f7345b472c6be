"""Fault matrix: the results directory is written atomically.

A writer process saves points (RunResult with histograms, then the point record, as ``hpload run`` does) in a
tight loop and is SIGKILLed at random moments, again and again. After every kill, every file a reader would pick up
must parse whole: ``ResultStore.records()`` sees only complete points, each result file loads, and any leftover is
a hidden temporary file that no reader globs.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from hpload.loadgen.result import RunResult
from hpload.scenarios.results import POINT_SUFFIX, ResultStore

WRITER = r"""
import itertools, random, sys
from hpload.loadgen.hist import LatencyHistogram
from hpload.loadgen.result import RunResult
from hpload.scenarios.results import PointRecord, ResultStore

store = ResultStore(sys.argv[1])
store.prepare({"name": "atomic"})
rng = random.Random(int(sys.argv[2]))
print("ready", flush=True)
for n in itertools.count():
    result = RunResult(label="w", counters={"completed": n, "failed": 0})
    for name in ("ttft", "itl", "e2el"):
        hist = LatencyHistogram()
        hist.extend_us([rng.randrange(1, 5_000_000) for _ in range(3000)])  # wide spread: a large file
        result.histograms[name] = hist
    point_id = f"p{n % 4}"
    record = PointRecord(point_id=point_id, label="w", kind="echo", status="ok", summary={"n": n},
                         settings={"pad": "x" * rng.randrange(10, 20000)})
    store.save(record, result)
"""


def test_sigkill_at_random_moments_never_leaves_a_half_written_file(tmp_path: Path) -> None:
    root = tmp_path / "results"
    rng = random.Random(8)
    kills = 20
    for i in range(kills):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(root), str(i)], stdout=subprocess.PIPE)
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        proc.stdout.close()
        check_every_visible_file(root)
    store = ResultStore(root)
    records = store.records()
    assert records, "the writer never finished a point in 20 tries"
    for record in records:
        loaded = store.load_result(record)
        assert loaded.counters["completed"] >= 0 and set(loaded.histograms) == {"ttft", "itl", "e2el"}


def check_every_visible_file(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_dir():
            continue
        if path.name.startswith("."):
            # mkstemp's temporary: the only thing a kill may leave, and hidden from every reader.
            assert not path.name.endswith((".json", POINT_SUFFIX)), path
            continue
        text = path.read_text()
        if path.suffix == ".hlog":
            check_hdr_log(text, path)
            continue
        data = json.loads(text)  # raises on a torn write
        assert isinstance(data, dict) and data, path
        if not path.name.endswith(POINT_SUFFIX) and path.name != "scenario.json":
            RunResult.load(path)


def check_hdr_log(text: str, path: Path) -> None:
    """An HdrHistogram log is whole when its header is there and every metric's line decodes to its histogram."""
    from hdrh.histogram import HdrHistogram

    lines = text.splitlines()
    assert text.endswith("\n") and lines[0] == "#[Histogram log format version 1.2]", path
    tags = [line for line in lines if line.startswith("Tag=")]
    assert {line.split(",", 1)[0] for line in tags} == {"Tag=ttft", "Tag=itl", "Tag=e2el"}, path
    for line in tags:
        assert HdrHistogram.decode(line.rsplit(",", 1)[1].encode("ascii")).get_total_count() == 3000, path
