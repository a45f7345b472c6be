"""The table of server kinds: everything hpload knows about a kind, in one entry.

Adding a kind (say ``tgi``): write one module holding its settings model (a pydantic model with
``kind: Literal["tgi"] = "tgi"`` and ``extra="forbid"``, see settings.py) and its :class:`~hpload.servers.base.Server`
subclass (``ProcessServer`` for a subprocess: ``argv(port)`` and ``env()``), then add one :class:`Kind` entry to
``KINDS`` below and its settings model to ``ServerSettings`` beside it (the type checker's view of the table; a test
checks the two agree). Scenario files, ``--server KIND``, ``hpload serve KIND`` (with ``cli`` set), the TUI's server
list and ``make_server`` all read the table, so nothing else changes.

Adding a setting to a kind: one field on its settings model (with ``Field(description=...)``: that is its
``hpload serve`` help). ``hpload serve`` builds its flags from the model (hpload.servers.cli), and the launchers
that start hpload's own servers build their child's command line from the same model.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, Field

from hpload.servers.settings import EchoSettings, ExternalSettings, HFSettings, VllmSettings

if TYPE_CHECKING:
    from hpload.servers.base import Server


@dataclass(frozen=True)
class Kind:
    """One server kind. ``server`` is ``"module:Class"``, imported only when a server of this kind is made."""

    settings: type[BaseModel]
    server: str
    summary: str
    builds: bool = False
    """True: hpload implements this server (servers/<kind>/); False: hpload only launches or attaches to it."""
    local_model: bool = False
    """The server loads a model directory (``model`` setting; None = the embedded tiny model), which the client
    also reads its tokenizer from."""
    cli: bool = True
    """``hpload serve KIND`` starts one in the foreground."""
    start_note: str = ""
    """Said when one starts (console output)."""

    @property
    def name(self) -> str:
        return str(self.settings.model_fields["kind"].default)

    def server_class(self) -> type[Server]:
        module, _, cls = self.server.partition(":")
        found: type[Server] = getattr(importlib.import_module(module), cls)
        return found


KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind(HFSettings, "hpload.servers.hf.launcher:HFServer",
             "hpload's OpenAI-compatible server around a transformers model", builds=True, local_model=True),
        Kind(EchoSettings, "hpload.servers.echo.launcher:EchoServer",
             "the calibration server: set TTFT, inter-token delay and output length", builds=True),
        Kind(VllmSettings, "hpload.servers.vllm:VllmServer", "vLLM's OpenAI server, supervised", local_model=True,
             start_note="vLLM takes a minute or two on a CPU"),
        Kind(ExternalSettings, "hpload.servers.external:ExternalServer",
             "an OpenAI-compatible server hpload does not manage (attach to its URL)", cli=False),
    )
}

ServerSettings = Annotated[VllmSettings | HFSettings | EchoSettings | ExternalSettings, Field(discriminator="kind")]
"""Any kind's settings, told apart by ``kind`` (scenario files embed these tables)."""


def kind_of(settings: BaseModel) -> Kind:
    return KINDS[str(getattr(settings, "kind"))]  # noqa: B009 - every settings model has it; BaseModel does not say so


def make_server(settings: ServerSettings, *, workdir: Path | None = None) -> Server:
    """The server for these settings, not started yet. ``workdir`` holds its log file (default: a temp dir).

    Every kind's Server takes ``(settings, *, workdir)``."""
    cls: Any = kind_of(settings).server_class()
    server: Server = cls(settings, workdir=workdir)
    return server
