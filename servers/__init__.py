"""hpload.servers: every server hpload drives, behind one interface.

``make_server(settings)`` returns a :class:`Server`; ``async with make_server(s) as srv:`` starts it, waits until a
real completion succeeds, and stops its whole process group on exit. Kinds: ``vllm`` (vLLM's OpenAI server), ``hf``
(hpload's transformers wrapper), ``transformers`` (HF's own ``transformers serve``), ``echo`` (the calibration server) and ``external`` (attach to a URL).
"""

from __future__ import annotations

from pathlib import Path

from hpload.servers.base import Server
from hpload.servers.settings import EchoSettings, ExternalSettings, HFSettings, ServerSettings, VllmSettings
from hpload.servers.transformers_serve import TransformersServer, TransformersSettings


def make_server(settings: VllmSettings | HFSettings | TransformersSettings | EchoSettings | ExternalSettings, *,
                workdir: Path | None = None) -> Server:
    """The server for these settings, not started yet. ``workdir`` holds its log file (default: a temp dir)."""
    if isinstance(settings, VllmSettings):
        from hpload.servers.vllm import VllmServer

        return VllmServer(settings, workdir=workdir)
    if isinstance(settings, HFSettings):
        from hpload.servers.hf import HFServer

        return HFServer(settings, workdir=workdir)
    if isinstance(settings, TransformersSettings):
        return TransformersServer(settings, workdir=workdir)
    if isinstance(settings, EchoSettings):
        from hpload.servers.echo_launcher import EchoServer

        return EchoServer(settings, workdir=workdir)
    from hpload.servers.external import ExternalServer

    return ExternalServer(settings)


__all__ = [
    "EchoSettings",
    "ExternalSettings",
    "HFSettings",
    "Server",
    "ServerSettings",
    "TransformersSettings",
    "VllmSettings",
    "make_server",
]
