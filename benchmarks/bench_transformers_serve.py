"""Served output tokens/s of HuggingFace's `transformers serve` beside hpload's transformers wrapper, same concurrency.

Each engine in each batching mode (wrapper: pipeline / continuous; transformers serve: plain / --continuous-batching)
is started once, loaded by hpload's own client at the same closed-loop concurrency with the same prompts, for
``--duration-s`` after a warm-up, ``--rounds`` times. Prints the median output tokens/s (server usage counts), the
median p50 TTFT, and each `transformers serve` mode as a ratio of the wrapper's best mode.

    python benchmarks/bench_transformers_serve.py [--model DIR] [--concurrency 8] [--max-tokens 64] [--rounds 3]
    python benchmarks/bench_transformers_serve.py --device cuda --model DIR     (on a GPU machine)

`transformers serve` does not take ignore_eos, so its requests may stop at EOS: tokens/s counts what it served, and
the mean output length is printed beside it so a shorter reply is not read as a faster server.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
from pathlib import Path
from typing import Any

from hpload.loadgen.specs import SLO, LoadSpec, WorkloadSpec
from hpload.scenarios.runner import ServerKeeper, measure
from hpload.servers import HFSettings
from hpload.servers.transformers_serve import TransformersSettings


def engines(model: str, device: str, threads: int | None) -> list[tuple[str, Any]]:
    dtype = "float32" if device == "cpu" else "bfloat16"
    common: dict[str, Any] = {"model": model, "dtype": dtype, "device": device, "torch_threads": threads}
    return [
        ("wrapper pipeline", HFSettings(label="hf-pipeline", mode="pipeline", batch_size=32, **common)),
        ("wrapper continuous", HFSettings(label="hf-continuous", mode="continuous", batch_size=32, **common)),
        ("transformers serve", TransformersSettings(label="ts-plain", **common)),
        ("transformers serve --continuous-batching",
         TransformersSettings(label="ts-cb", continuous_batching=True, **common)),
    ]


async def bench(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    workload = WorkloadSpec(input_len=args.input_len, max_tokens=args.max_tokens, ignore_eos=True, num_prompts=64)
    load = LoadSpec(concurrency=args.concurrency, duration_s=args.duration_s, warmup_s=args.warmup_s)
    out: dict[str, dict[str, float]] = {}
    for name, settings in engines(args.model, args.device, args.torch_threads):
        keeper = ServerKeeper(workdir=Path(args.workdir))
        tps, ttft, length = [], [], []
        try:
            for _ in range(args.rounds):
                result, error = await measure(keeper, settings, workload, load, SLO())
                if error or result is None:
                    print(f"{name}: failed: {error}")
                    break
                s = result.summary
                tps.append(s["output_throughput"])
                ttft.append(s["median_ttft_ms"])
                length.append(s["total_output_tokens"] / max(1, s["completed"]))
        finally:
            await keeper.close()
        if tps:
            out[name] = {"tok_s": statistics.median(tps), "ttft_ms": statistics.median(ttft),
                         "out_len": statistics.median(length), "rounds": len(tps)}
    return out


def main() -> None:
    from hpload.model import ensure_tiny_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model directory (default: the embedded tiny model)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--input-len", type=int, default=64)
    ap.add_argument("--duration-s", type=float, default=15.0)
    ap.add_argument("--warmup-s", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--torch-threads", type=int, default=None, help="default: 1 on a CPU (shared cores stall)")
    ap.add_argument("--workdir", default="/tmp/hpload-bench-ts")
    args = ap.parse_args()
    args.model = args.model or str(ensure_tiny_model())
    if args.torch_threads is None and args.device == "cpu":
        args.torch_threads = 1
    res = asyncio.run(bench(args))
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, device {args.device}; model {args.model}")
    print(f"closed loop, concurrency {args.concurrency}, max_tokens {args.max_tokens}, {args.duration_s:g} s x "
          f"{args.rounds} rounds (medians)\n")
    print(f"{'engine':<42} {'out tok/s':>10} {'p50 ttft ms':>12} {'mean out len':>13}")
    for name, r in res.items():
        print(f"{name:<42} {r['tok_s']:>10.1f} {r['ttft_ms']:>12.1f} {r['out_len']:>13.1f}")
    wrapper = max((r["tok_s"] for n, r in res.items() if n.startswith("wrapper")), default=0.0)
    if wrapper:
        for name, r in res.items():
            if name.startswith("transformers"):
                print(f"ratio {name} / best wrapper mode: {r['tok_s'] / wrapper:.2f}")


if __name__ == "__main__":
    main()
