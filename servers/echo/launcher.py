"""The echo calibration server (``hpload.servers.echo``) as a supervised subprocess, like every other server."""

from __future__ import annotations

import sys
from pathlib import Path

from hpload.servers.base import ProcessServer
from hpload.servers.echo.server import API_KEY_ENV
from hpload.servers.settings import EchoSettings


def echo_argv(settings: EchoSettings, port: int) -> list[str]:
    s = settings
    return [
        sys.executable, "-m", "hpload.servers.echo",
        "--host", s.host, *(["--allow-remote"] if s.allow_remote else []), "--port", str(port),
        "--ttft-ms", str(s.ttft_ms), "--itl-ms", str(s.itl_ms),
        "--output-tokens", str(s.output_tokens), "--model", s.served_model_name,
        *(["--precise"] if s.precise else []),
        *(["--trace", str(Path(s.trace).resolve())] if s.trace else []),
        *(["--batching", "--step-ms", str(s.step_ms), "--step-per-seq-ms", str(s.step_per_seq_ms),
           "--max-batch", str(s.max_batch), "--prefill-ms-per-token", str(s.prefill_ms_per_token)]
          if s.batching else []),
    ]


class EchoServer(ProcessServer[EchoSettings]):

    def argv(self, port: int) -> list[str]:
        return echo_argv(self.settings, port)

    def env(self) -> dict[str, str]:
        # Always set, so a key in hpload's own environment never reaches an echo server started without one.
        return {API_KEY_ENV: self.api_key or ""}
