"""The one interface every server kind shares, and the common part of the ones hpload runs as subprocesses.

Lifecycle: ``start()`` spawns, ``wait_ready()`` waits for a real completion (a ``/health`` 200 alone is not enough:
vLLM answers it before its engine has failed), ``stop()`` tears the process group down. As an async context
manager, entering does start + wait_ready and exiting does stop, also when start-up fails.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import os
import re
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

import httpx

from hpload import procs
from hpload.errors import ServerError, one_line

log = logging.getLogger("hpload.servers")
S = TypeVar("S")  # a kind's settings model

# Lines that usually name why a Python server died; the last one wins.
_CAUSE_RE = re.compile(r"\b(\w+(Error|Exception|Exit)|Traceback|error:|Killed|CUDA out of memory)", re.IGNORECASE)


class Server(abc.ABC):
    """A running (or attachable) OpenAI-compatible server."""

    label: str
    model: str
    api_key: str | None = None
    metrics_url: str | None = None
    log_path: Path | None = None
    startup_timeout_s: float = 60.0

    def __init__(self) -> None:
        self._base_url: str | None = None

    @property
    def base_url(self) -> str:
        if self._base_url is None:
            raise ServerError(f"server {self.label}: base_url is not known before start(); fix: start it first")
        return self._base_url

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def wait_ready(self, timeout_s: float | None = None) -> None: ...

    @abc.abstractmethod
    async def stop(self) -> None: ...

    @abc.abstractmethod
    def alive(self) -> bool: ...

    @property
    def returncode(self) -> int | None:
        return None

    def log_tail(self, n: int = 40) -> str:
        return procs.tail_file(self.log_path, n)

    def pids(self) -> list[int]:
        return []

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def check(self) -> None:
        """Raise :class:`ServerError` (with the cause and log tail) if the server has died."""
        return None

    async def wait_exit(self, timeout_s: float) -> int | None:
        """Wait up to ``timeout_s`` for the server to exit on its own: its exit code, or None if it still runs."""
        return None

    async def __aenter__(self) -> Self:
        await self.start()
        try:
            await self.wait_ready(self.startup_timeout_s)
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def death_cause(log_tail: str) -> str:
    """The last log line that looks like the reason a process died, or a neutral phrase."""
    for line in reversed(log_tail.splitlines()):
        if _CAUSE_RE.search(line) and "Traceback" not in line:
            return one_line(line.strip(), 200)
    return "no error line in its log"


async def probe_completion(client: httpx.AsyncClient, base_url: str, model: str, headers: dict[str, str]) -> str | None:
    """One real 1-token completion. Returns None when it worked, else a short reason."""
    try:
        health = await client.get(f"{base_url}/health", headers=headers)
        if health.status_code != 200:
            return f"/health answered {health.status_code}"
        resp = await client.post(
            f"{base_url}/v1/completions",
            json={"model": model, "prompt": "hello", "max_tokens": 1, "temperature": 0},
            headers=headers,
        )
    except httpx.HTTPError as err:
        return f"{type(err).__name__}: {err}"
    if resp.status_code != 200:
        return f"completion answered {resp.status_code}: {one_line(resp.text, 200)}"
    try:
        usage = resp.json().get("usage") or {}
    except ValueError:
        return "completion answered with a body that is not JSON"
    if int(usage.get("completion_tokens") or 0) < 1:
        return "completion produced no token"
    return None


class ProcessServer(Server, Generic[S]):
    """A server hpload spawns: a free loopback port, a process group, a log file, and readiness by completion.

    ``settings`` is the kind's settings model; the fields every spawned kind has (label, host, port, api_key,
    startup_timeout_s, served_model_name) are read here, so a subclass writes ``argv``/``env`` and, when it loads a
    local model, overrides ``local_model_dir``."""

    host: str = "127.0.0.1"

    def __init__(self, settings: S, *, workdir: Path | None = None) -> None:
        super().__init__()
        s: Any = settings
        self.settings = settings
        self.label = s.label
        self.host = s.host
        self._port = s.port
        self._workdir = workdir
        self.startup_timeout_s = s.startup_timeout_s
        self.api_key = s.api_key.get_secret_value() if s.api_key else None
        self._child: procs.Child | None = None
        self._stopping = False
        self.model_dir = self.local_model_dir(getattr(s, "model", None))
        self.model = s.served_model_name or self.model_dir

    def local_model_dir(self, model: str | None) -> str:
        """The model directory this kind loads, from its ``model`` setting; "" for a kind with no local model."""
        return ""

    @abc.abstractmethod
    def argv(self, port: int) -> list[str]:
        """The command line, an argument list."""

    def env(self) -> dict[str, str] | None:
        """Environment overrides (merged over os.environ), or None for none."""
        return None

    @property
    def port(self) -> int:
        if self._port is None:
            raise ServerError(f"server {self.label}: port is not known before start()")
        return self._port

    async def start(self) -> None:
        if self._child is not None:
            raise ServerError(f"server {self.label}: already started")
        if self.host not in ("127.0.0.1", "localhost", "::1"):
            log.warning("server %s binds %s: reachable beyond this machine (hpload's default is 127.0.0.1)",
                        self.label, self.host)
        port = self._port or free_port(self.host)
        self._port = port
        workdir = self._workdir or Path(tempfile.mkdtemp(prefix="hpload-"))
        self.log_path = workdir / f"{self.label}-{port}.log"
        env = dict(os.environ)
        env.update(self.env() or {})
        self._child = procs.spawn(self.argv(port), log_path=self.log_path, env=env)
        self._base_url = f"http://{self.host}:{port}"
        self.metrics_url = f"{self._base_url}/metrics"

    async def wait_ready(self, timeout_s: float | None = None) -> None:
        timeout_s = self.startup_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        last_reason = "not probed yet"
        async with httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=2.0), trust_env=False) as client:
            while True:
                self.check()
                last_reason = await probe_completion(client, self.base_url, self.model, self.headers()) or ""
                if not last_reason:
                    return
                if time.monotonic() > deadline:
                    raise ServerError(
                        f"server {self.label}: not ready after {timeout_s:.0f} s ({last_reason}); fix: raise "
                        f"startup_timeout_s or read the log {self.log_path}; last log lines:\n{self.log_tail(15)}"
                    )
                await asyncio.sleep(0.5)

    def check(self) -> None:
        child = self._child
        if child is None or child.alive():
            return
        tail = child.log_tail(20)
        raise ServerError(
            f"server {self.label} exited with code {child.returncode}: {death_cause(tail)}; "
            f"log {self.log_path}; last log lines:\n{tail}"
        )

    async def wait_exit(self, timeout_s: float) -> int | None:
        if self._child is None:
            return None
        try:
            return await asyncio.to_thread(self._child.popen.wait, timeout_s)
        except subprocess.TimeoutExpired:
            return None

    async def stop(self) -> None:
        if self._child is not None:
            self._stopping = True
            await self._child.aterminate()

    def alive(self) -> bool:
        return self._child is not None and self._child.alive()

    @property
    def returncode(self) -> int | None:
        return None if self._child is None else self._child.returncode

    def pids(self) -> list[int]:
        return [] if self._child is None else self._child.pids()
