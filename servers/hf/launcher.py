"""The transformers wrapper: ``run_hf`` serves in this process (``hpload serve hf``); ``HFServer`` launches that
command as a supervised subprocess, like vLLM, so that both servers are measured the same way."""

from __future__ import annotations

import logging
import os
import sys

from hpload.errors import HploadError
from hpload.servers.base import ProcessServer
from hpload.servers.settings import HFSettings

API_KEY_ENV = "HPLOAD_API_KEY"  # the key travels by environment, so it never shows in `ps` or a log line

log = logging.getLogger("hpload.hf")


def hf_argv(settings: HFSettings, model_dir: str, port: int) -> list[str]:
    """``hpload serve hf`` flags for these settings (everything but the API key), built from the settings model
    itself, so a new setting reaches the child with no edit here."""
    from hpload.servers.cli import settings_flags

    s = settings.model_copy(update={"model": model_dir})
    argv = ["--host", s.host, "--port", str(port), "--label", s.label, *settings_flags(s)]
    if s.served_model_name:
        argv += ["--served-model-name", s.served_model_name]
    return argv


def resolve_model_dir(model: str | None) -> str:
    from hpload.model import resolve_model

    return str(resolve_model(model))


class HFServer(ProcessServer[HFSettings]):
    def local_model_dir(self, model: str | None) -> str:
        return resolve_model_dir(model)

    def argv(self, port: int) -> list[str]:
        return [sys.executable, "-m", "hpload", "serve", "hf", *hf_argv(self.settings, self.model_dir, port)]

    def env(self) -> dict[str, str]:
        # The key is always set (empty when unkeyed), so a key in hpload's own environment never guards a server
        # that was started without one.
        return {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", API_KEY_ENV: self.api_key or ""}


def run_hf(settings: HFSettings) -> int:
    """Load the model, then serve until SIGINT/SIGTERM. Blocks."""
    import uvicorn

    from hpload.servers.hf.app import build_app
    from hpload.servers.hf.engine import load_model, make_engine
    from hpload.servers.hf.metrics import ServerMetrics

    logging.basicConfig(level=os.environ.get("HPLOAD_LOG_LEVEL", "INFO"), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("binding %s: the server is reachable beyond this machine; hpload's default is 127.0.0.1",
                    settings.host)
    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    model_dir = resolve_model_dir(settings.model)
    model_name = settings.served_model_name or model_dir
    api_key = settings.api_key.get_secret_value() if settings.api_key else os.environ.get(API_KEY_ENV) or None
    try:
        model, tokenizer = load_model(settings, model_dir)
    except (OSError, ValueError) as err:
        raise HploadError(f"model: cannot load '{model_dir}' ({err}); fix: point --model at a transformers model "
                          "directory") from None
    metrics = ServerMetrics(model_name)
    engine = make_engine(settings, model, tokenizer, metrics)
    log.info("serving %s (%s mode, batch_size %d) on %s:%s, auth %s", model_name, settings.mode, settings.batch_size,
             settings.host, settings.port, "on" if api_key else "off")
    app = build_app(engine, model_name=model_name, api_key=api_key)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port or 8000,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=3,  # streams in flight must not hold shutdown for long
    )
    try:
        uvicorn.Server(config).run()
    finally:
        engine.close()
    return 0
