"""hpload.servers: every server hpload drives, behind one interface.

``make_server(settings)`` returns a :class:`Server`; ``async with make_server(s) as srv:`` starts it, waits until a
real completion succeeds, and stops its whole process group on exit. The kinds (``vllm``, ``hf``, ``echo``,
``external``) are one table, :data:`hpload.servers.kinds.KINDS`: a new kind is one module and one entry there.
Servers hpload builds live in packages (``echo/``, ``hf/``); the ones it only launches or attaches to are modules.
"""

from __future__ import annotations

from hpload.servers.base import Server
from hpload.servers.kinds import KINDS, ServerSettings, make_server
from hpload.servers.settings import EchoSettings, ExternalSettings, HFSettings, VllmSettings

__all__ = [
    "KINDS",
    "EchoSettings",
    "ExternalSettings",
    "HFSettings",
    "Server",
    "ServerSettings",
    "VllmSettings",
    "make_server",
]
