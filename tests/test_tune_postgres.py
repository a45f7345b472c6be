"""Two ``hpload tune`` processes, each with its own echo server, work one Optuna study through a real PostgreSQL
server on loopback that this test starts from Debian's postgresql package (initdb + postgres, no system service)."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import wait_s

pytestmark = pytest.mark.postgres

SCENARIO = """\
name = "pg-tune"

[[servers]]
kind = "echo"
ttft_ms = 2
itl_ms = 1

[workload]
input_len = 8
max_tokens = 4

[load]
concurrency = 1
num_requests = 10

[slo]
ttft_p99_ms = 60000

[tune]
sampler = "tpe"
n_trials = 8
study_name = "shared"

[tune.space.server.itl_ms]
values = [0.5, 1.0, 2.0, 4.0]

[tune.space.load.concurrency]
values = [1, 2, 4, 8]
"""


def _pg_bin() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(candidates[-1]).parent if candidates else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL binaries (initdb, postgres) not found; install Debian's postgresql package")
    # PostgreSQL refuses to run as root: run it as the package's 'postgres' user when the tests run as root.
    demote: list[str] = []
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and no 'postgres' user to run the server as")
        demote = ["runuser", "-u", "postgres", "--"]
    # Not under pytest's tmp dirs: those are private to root, and the server may run as 'postgres'.
    root = Path(tempfile.mkdtemp(prefix="hpload-pg-"))
    data, sockets = root / "data", root / "sock"
    data.mkdir()
    sockets.mkdir()
    if demote:
        shutil.chown(root, "postgres")
        shutil.chown(data, "postgres")
        shutil.chown(sockets, "postgres")
        root.chmod(0o755)
    subprocess.run([*demote, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "hpload", "--no-sync"],
                   check=True, capture_output=True, timeout=120)
    port = _free_port()
    log = open(root / "postgres.log", "wb")  # noqa: SIM115 - closed at teardown
    server = subprocess.Popen(
        [*demote, str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-h", "127.0.0.1",
         "-k", str(sockets), "-c", "fsync=off"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        import psycopg2

        deadline = time.monotonic() + wait_s(60)
        while True:
            assert server.poll() is None, (root / "postgres.log").read_text()
            try:
                conn = psycopg2.connect(host="127.0.0.1", port=port, user="hpload", dbname="postgres")
                break
            except psycopg2.OperationalError:
                assert time.monotonic() < deadline, "PostgreSQL did not accept connections in 60 s"
                time.sleep(0.2)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE optuna")
        conn.close()
        yield f"postgresql+psycopg2://hpload@127.0.0.1:{port}/optuna"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGINT)  # fast shutdown
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(10)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def test_two_tuning_processes_share_one_postgres_study(postgres_url: str, tmp_path: Path) -> None:
    import optuna

    scenario = tmp_path / "pg.toml"
    scenario.write_text(SCENARIO)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "hpload", "tune", str(scenario), "--storage", postgres_url,
             "--results", str(tmp_path / f"host{i}"), "--quiet"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=400) for p in procs]
    for proc, (_out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err

    study = optuna.load_study(study_name="shared", storage=postgres_url)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    owners = {str(t.user_attrs.get("owner")) for t in complete}
    assert len(owners) == 2, f"both processes must have told trials, got owners {owners}"
    measured = [len(list((tmp_path / f"host{i}").glob("points/*.point.json"))) for i in range(2)]
    assert all(m >= 1 for m in measured)
    distinct = {tuple(sorted(t.params.items())) for t in complete}
    # Together they measured the study's budget: each stops once the shared study holds it (both may finish a
    # last trial at the same moment), and a point one process told is never measured again by the other.
    assert 8 <= len(distinct) <= 9
    assert sum(measured) == len(distinct)
    assert len({t.number for t in study.trials}) == len(study.trials)
    # What each process printed as the best is a point of the shared study, and the later one saw the overall best.
    feasible = [t.value for t in complete if t.value is not None and all(v <= 0 for v in t.constraints.values())]
    printed = [float(line.rsplit(":", 1)[1]) for out, _ in outputs for line in out.splitlines()
               if "best feasible" in line]
    assert len(printed) == 2
    assert max(printed) == pytest.approx(max(feasible), abs=0.01)
