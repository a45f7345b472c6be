"""``hpload serve KIND`` (the kinds with ``cli`` in hpload.servers.kinds): one server in the foreground until Ctrl-C
or SIGTERM. The flags come from the kind's settings model, so a new setting needs no edit here.

``hf`` serves in this process; ``echo`` and ``vllm`` run as a supervised child process group, so stopping hpload
stops them too.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from hpload.errors import HploadError


def configure(parser: argparse.ArgumentParser) -> None:
    from hpload.servers.kinds import KINDS

    names = [name for name, kind in KINDS.items() if kind.cli]
    kinds = parser.add_subparsers(dest="kind", required=True, metavar="{" + ",".join(names) + "}")
    for name in names:
        kind = KINDS[name]
        sub = kinds.add_parser(name, help=kind.summary)
        add_settings_flags(sub, kind.settings)
        if "extra_args" in kind.settings.model_fields:
            sub.add_argument("extra_args", nargs=argparse.REMAINDER, help=f"-- then any other {name} flags")
        _common(sub, default_label=name)


# Fields that are not flags: the tag, the ones _common spells out, and the ones with no command-line form.
_NOT_FLAGS = {"kind", "label", "host", "port", "served_model_name", "api_key", "env", "extra_args", "startup_timeout_s"}


def add_settings_flags(parser: argparse.ArgumentParser, model: type[BaseModel]) -> None:
    """One flag per field of a settings model (``batch_size`` -> ``--batch-size``), typed and described by the model.

    Every default is None, so a flag left out keeps the model's own default: a setting and its default are written
    once, on the model."""
    for field, info in model.model_fields.items():
        if field in _NOT_FLAGS:
            continue
        flag = "--" + field.replace("_", "-")
        default = info.get_default(call_default_factory=True)
        help_text = info.description or field.replace("_", " ")
        if default is not None:
            help_text += f" (default {default})"
        annotation = info.annotation
        if get_origin(annotation) in (Union, UnionType):  # X | None: the flag takes an X
            annotation = next(a for a in get_args(annotation) if a is not type(None))
        base: Any = annotation
        if get_origin(base) is Literal:
            parser.add_argument(flag, choices=list(get_args(base)), default=None, help=help_text)
        elif base is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif base in (int, float, str):
            parser.add_argument(flag, type=base, default=None, help=help_text)


def settings_flags(settings: BaseModel) -> list[str]:
    """The inverse of :func:`add_settings_flags`: the flags that rebuild these settings' values (unset ones left out,
    so the child applies the same model defaults)."""
    argv: list[str] = []
    for field in type(settings).model_fields:
        value = getattr(settings, field)
        if field in _NOT_FLAGS or value is None:
            continue
        flag = "--" + field.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        else:
            argv += [flag, str(value)]
    return argv


def _common(parser: argparse.ArgumentParser, *, default_label: str) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    parser.add_argument("--port", type=int, default=None, help="port (default: 8000 for hf, else a free one)")
    parser.add_argument("--served-model-name", default=None, help="the model name clients put in requests")
    parser.add_argument("--api-key", default=None,
                        help="require 'Authorization: Bearer KEY' (or set HPLOAD_API_KEY, which keeps it out of ps)")
    parser.add_argument("--label", default=default_label, help=argparse.SUPPRESS)


def settings_from_args(args: argparse.Namespace) -> Any:
    from hpload.servers.kinds import KINDS

    values = {k: v for k, v in vars(args).items() if k not in ("kind", "command") and v is not None}
    if "api_key" not in values and os.environ.get("HPLOAD_API_KEY"):
        values["api_key"] = os.environ["HPLOAD_API_KEY"]
    cls = KINDS[args.kind].settings
    if args.kind == "vllm":
        values["extra_args"] = [a for a in values.get("extra_args", []) if a != "--"]
    if args.kind == "hf" and "port" not in values:
        values["port"] = 8000
    try:
        return cls(**values)
    except ValidationError as err:
        raise HploadError(settings_error(err, prefix="--")) from None


def settings_error(err: ValidationError, *, prefix: str = "") -> str:
    """One line naming the first bad field (as a flag when ``prefix`` is '--') and what it must be."""
    first = err.errors()[0]
    field = ".".join(str(p) for p in first["loc"])
    name = prefix + field.replace("_", "-") if prefix else field
    got = "" if "key" in field else f" (got {first.get('input')!r})"  # never echo a secret
    return f"{name}: {first['msg']}{got}; fix: correct {name}"


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if args.kind == "hf":
        from hpload.servers.hf.launcher import run_hf

        return run_hf(settings)
    return asyncio.run(_supervise(settings))


async def _supervise(settings: Any) -> int:
    from hpload.servers import make_server

    async with make_server(settings) as server:
        sys.stdout.write(f"{server.label} ready at {server.base_url} (model '{server.model}'); log {server.log_path}\n")
        sys.stdout.flush()
        while True:
            await asyncio.sleep(0.5)
            server.check()  # a ServerError (an HploadError) ends the command with the cause and log tail
