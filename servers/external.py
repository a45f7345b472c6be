"""A server hpload does not manage: it attaches to a URL, learns the model name, and never stops it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from hpload.errors import ServerError
from hpload.servers.base import Server, probe_completion
from hpload.servers.settings import ExternalSettings


class ExternalServer(Server):
    def __init__(self, settings: ExternalSettings, *, workdir: Path | None = None) -> None:  # no log: not ours
        super().__init__()
        self.settings = settings
        self.label = settings.label
        self._base_url = settings.url.rstrip("/").removesuffix("/v1")
        self.model = settings.model or ""
        self.api_key = settings.api_key.get_secret_value() if settings.api_key else None
        self.metrics_url = settings.metrics_url
        self.startup_timeout_s = settings.startup_timeout_s
        self._ready = False

    async def start(self) -> None:
        """Nothing to launch; the URL is checked by :meth:`wait_ready`."""

    async def wait_ready(self, timeout_s: float | None = None) -> None:
        timeout_s = self.startup_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        reason = ""
        async with httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=2.0), trust_env=False) as client:
            while time.monotonic() < deadline:
                try:
                    if not self.model:
                        self.model = await self._first_model(client)
                    reason = await probe_completion(client, self.base_url, self.model, self.headers()) or ""
                except (httpx.HTTPError, ValueError, KeyError, IndexError) as err:
                    reason = f"{type(err).__name__}: {err}"
                if not reason:
                    break
                await asyncio.sleep(0.5)
            else:
                raise ServerError(
                    f"server {self.label}: {self.base_url} not ready after {timeout_s:.0f} s ({reason}); "
                    "fix: check url, model and api_key"
                )
            if self.metrics_url is None:
                resp = await client.get(f"{self.base_url}/metrics", headers=self.headers())
                self.metrics_url = f"{self.base_url}/metrics" if resp.status_code == 200 else None
        self._ready = True

    async def _first_model(self, client: httpx.AsyncClient) -> str:
        resp = await client.get(f"{self.base_url}/v1/models", headers=self.headers())
        resp.raise_for_status()
        return str(resp.json()["data"][0]["id"])

    async def stop(self) -> None:
        """Not ours to stop."""
        self._ready = False

    def alive(self) -> bool:
        return self._ready
