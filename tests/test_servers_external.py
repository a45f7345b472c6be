"""The external kind attaches to a running server it does not own: model and metrics found, never stopped."""

from __future__ import annotations

import httpx
import pytest

from hpload.errors import ServerError
from hpload.servers import ExternalSettings, Server, make_server


async def test_external_attaches_and_discovers_model(echo_server: Server) -> None:
    attached = make_server(ExternalSettings(url=echo_server.base_url + "/v1"))
    async with attached:
        assert attached.base_url == echo_server.base_url
        assert attached.model == echo_server.model
        assert attached.metrics_url == f"{echo_server.base_url}/metrics"
        assert attached.pids() == []
    # Leaving the context must not stop a server hpload does not manage.
    assert echo_server.alive()
    async with httpx.AsyncClient(trust_env=False) as client:
        assert (await client.get(f"{echo_server.base_url}/health")).status_code == 200


async def test_external_unreachable_url_fails_with_the_fix() -> None:
    from hpload.servers.base import free_port

    attached = make_server(ExternalSettings(url=f"http://127.0.0.1:{free_port()}", startup_timeout_s=1.5))
    with pytest.raises(ServerError, match="not ready") as caught:
        async with attached:
            pass
    assert "fix:" in str(caught.value)


async def test_echo_server_is_supervised_in_its_own_group(echo_server: Server) -> None:
    import os

    pids = echo_server.pids()
    assert pids and all(os.getpgid(p) == pids[0] for p in pids)
    assert echo_server.log_path is not None and echo_server.log_path.is_file()
