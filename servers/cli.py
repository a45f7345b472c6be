"""``hpload serve {hf,echo,vllm}``: start one server in the foreground until Ctrl-C or SIGTERM.

``hf`` serves in this process; ``echo`` and ``vllm`` run as a supervised child process group, so stopping hpload
stops them too.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any

from pydantic import ValidationError

from hpload.errors import HploadError


def configure(parser: argparse.ArgumentParser) -> None:
    kinds = parser.add_subparsers(dest="kind", required=True, metavar="{hf,echo,vllm}")

    hf = kinds.add_parser("hf", help="hpload's OpenAI-compatible server around a transformers model")
    hf.add_argument("--model", default=None, help="local model directory (default: the embedded tiny model)")
    hf.add_argument("--mode", choices=["pipeline", "continuous"], default="pipeline",
                    help="pipeline: static batches through generate(); continuous: transformers' continuous batching")
    hf.add_argument("--batch-size", type=int, default=8, help="most requests per batch (default 8)")
    hf.add_argument("--max-batch-wait-ms", type=float, default=5.0,
                    help="pipeline: a batch closes when full or after this long with no new request (default 5)")
    hf.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16")
    hf.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when present)")
    hf.add_argument("--device-map", default=None, help="e.g. auto, to spread a model over several GPUs")
    hf.add_argument("--max-new-tokens-limit", type=int, default=4096, help="largest max_tokens a request may ask")
    hf.add_argument("--torch-threads", type=int, default=None,
                    help="CPU threads for torch (default: torch's choice; 1 avoids spin-wait stalls on a busy CPU)")
    hf.add_argument("--load-format", choices=["auto", "dummy"], default="auto", help="dummy = random weights")
    _common(hf, default_label="hf")

    echo = kinds.add_parser("echo", help="the calibration server: set TTFT, inter-token delay and output length")
    echo.add_argument("--ttft-ms", type=float, default=20.0)
    echo.add_argument("--itl-ms", type=float, default=5.0)
    echo.add_argument("--output-tokens", type=int, default=64, help="tokens per reply when a request sets none")
    echo.add_argument("--trace", metavar="FILE", help="one JSON line per finished stream: id, arrival, every write")
    from hpload.servers.echo_batching import add_arguments as add_batching

    add_batching(echo)  # --batching: an inference server in miniature, for capacity searches (docs/capacity.md)
    _common(echo, default_label="echo")

    vllm = kinds.add_parser("vllm", help="vLLM's OpenAI server, supervised (flags after -- go to vLLM as given)")
    vllm.add_argument("--model", default=None, help="local model directory (default: the embedded tiny model)")
    vllm.add_argument("--dtype", default="auto")
    vllm.add_argument("--max-model-len", type=int, default=None)
    vllm.add_argument("--max-num-seqs", type=int, default=None)
    vllm.add_argument("--max-num-batched-tokens", type=int, default=None)
    vllm.add_argument("extra_args", nargs=argparse.REMAINDER, help="-- then any other vLLM flags")
    _common(vllm, default_label="vllm")


def _common(parser: argparse.ArgumentParser, *, default_label: str) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    parser.add_argument("--port", type=int, default=None, help="port (default: 8000 for hf, else a free one)")
    parser.add_argument("--served-model-name", default=None, help="the model name clients put in requests")
    parser.add_argument("--api-key", default=None,
                        help="require 'Authorization: Bearer KEY' (or set HPLOAD_API_KEY, which keeps it out of ps)")
    parser.add_argument("--label", default=default_label, help=argparse.SUPPRESS)


def settings_from_args(args: argparse.Namespace) -> Any:
    from hpload.servers.settings import EchoSettings, HFSettings, VllmSettings

    values = {k: v for k, v in vars(args).items() if k not in ("kind", "command") and v is not None}
    if "api_key" not in values and os.environ.get("HPLOAD_API_KEY"):
        values["api_key"] = os.environ["HPLOAD_API_KEY"]
    cls: type[Any] = {"hf": HFSettings, "echo": EchoSettings, "vllm": VllmSettings}[args.kind]
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
        from hpload.servers.hf import run_hf

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
