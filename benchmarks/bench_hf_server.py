"""Served vs offline throughput of hpload's transformers wrapper, in both batching modes.

For each batch size B in (1, 8, 32): output tokens/s of the wrapper at concurrency B (closed loop, streamed, usage
counted by the server), against an offline ``model.generate`` of the same B prompts in this process, same model, same
machine, greedy, fixed output length. Prints medians over rounds and the served/offline ratio (target >= 0.8).

    python benchmarks/bench_hf_server.py [--model DIR] [--output-tokens 64] [--prompt-tokens 32] [--rounds 3]

The client runs on the same cores as the server, as a load test would: the ratio includes that cost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import time
from pathlib import Path
from typing import Any

import httpx

from hpload.servers import HFSettings, Server, make_server


def prompts(count: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    # Skip the first ids: the tiny model's special tokens live there.
    return [[rng.randrange(8, vocab) for _ in range(length)] for _ in range(count)]


class Offline:
    """The same model in this process, for ``model.generate`` on the same prompts."""

    def __init__(self, model_dir: str, threads: int) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(threads)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

    def run(self, batch_prompts: list[list[int]], output_tokens: int) -> tuple[float, float]:
        """(tok/s, CPU seconds per 1000 tokens) of one offline batch."""
        import torch

        ids = torch.tensor(batch_prompts, dtype=torch.long)
        cpu0, start = time.process_time(), time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                      max_new_tokens=output_tokens, min_new_tokens=output_tokens,
                                      pad_token_id=self.model.config.pad_token_id)
        tokens = (out.shape[1] - ids.shape[1]) * len(batch_prompts)
        return tokens / (time.perf_counter() - start), 1000 * (time.process_time() - cpu0) / tokens


async def _one(client: httpx.AsyncClient, server: Server, prompt: list[int], n: int) -> int:
    body = {"model": server.model, "prompt": prompt, "max_tokens": n, "ignore_eos": True, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}
    tokens = 0
    async with client.stream("POST", "/v1/completions", json=body) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            if line.startswith("data: {") and '"usage"' in line:
                tokens = int(json.loads(line[6:])["usage"]["completion_tokens"])
    return tokens


async def paired_rounds(server: Server, offline: Offline, batch: int, vocab: int,
                        args: argparse.Namespace) -> dict[str, float]:
    """Medians of served and offline tok/s and CPU seconds per 1000 tokens, alternating one served and one offline
    round so that the load other users put on this shared machine hits both sides alike. CPU per token is the
    fairer comparison on a shared box: served wall time also pays for the client's CPU and for other users."""
    import psutil

    server_proc = psutil.Process(server.pids()[0])
    limits = httpx.Limits(max_connections=batch + 4, max_keepalive_connections=batch + 4)
    served, local, served_cpu, local_cpu = [], [], [], []
    async with httpx.AsyncClient(base_url=server.base_url, timeout=600, limits=limits, trust_env=False) as client:
        for r in range(args.rounds + 1):  # round 0 warms both up
            batch_prompts = prompts(batch, args.prompt_tokens, vocab, seed=r)
            cpu0 = sum(server_proc.cpu_times()[:2])
            start = time.perf_counter()
            counts = await asyncio.gather(*[_one(client, server, p, args.output_tokens) for p in batch_prompts])
            elapsed = time.perf_counter() - start
            cpu = sum(server_proc.cpu_times()[:2]) - cpu0
            assert all(c == args.output_tokens for c in counts), counts
            offline_rate, offline_cpu = offline.run(batch_prompts, args.output_tokens)
            if r:
                served.append(sum(counts) / elapsed)
                served_cpu.append(1000 * cpu / sum(counts))
                local.append(offline_rate)
                local_cpu.append(offline_cpu)
    med = statistics.median
    return {"served": med(served), "offline": med(local), "served_cpu": med(served_cpu), "offline_cpu": med(local_cpu)}


async def mixed_closed_loop(server: Server, concurrency: int, lengths: list[int], vocab: int,
                            prompt_tokens: int) -> tuple[float, float, float]:
    """Closed loop over requests of mixed output lengths: (output tok/s, median TTFT s, p90 TTFT s)."""
    todo = list(enumerate(lengths))
    ttfts: list[float] = []
    produced = 0
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal produced
        while todo:
            i, n = todo.pop()
            body = {"model": server.model, "prompt": prompts(1, prompt_tokens, vocab, seed=1000 + i)[0],
                    "max_tokens": n, "ignore_eos": True, "temperature": 0, "stream": True,
                    "stream_options": {"include_usage": True}}
            sent = time.perf_counter()
            first = None
            async with client.stream("POST", "/v1/completions", json=body) as resp:
                async for line in resp.aiter_lines():
                    if first is None and line.startswith("data: {") and '"text":"' in line and '"text":""' not in line:
                        first = time.perf_counter() - sent
                    if '"usage"' in line:
                        produced += int(json.loads(line[6:])["usage"]["completion_tokens"])
            ttfts.append(first if first is not None else time.perf_counter() - sent)

    async with httpx.AsyncClient(base_url=server.base_url, timeout=600, limits=limits, trust_env=False) as client:
        start = time.perf_counter()
        await asyncio.gather(*[worker(client) for _ in range(concurrency)])
        elapsed = time.perf_counter() - start
    ttfts.sort()
    return produced / elapsed, statistics.median(ttfts), ttfts[int(0.9 * (len(ttfts) - 1))]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--modes", default="pipeline,continuous")
    parser.add_argument("--output-tokens", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--max-batch-wait-ms", type=float, default=50.0)
    parser.add_argument("--mixed-concurrency", type=int, default=16,
                        help="the mixed-length run: concurrency and batch size (0 skips it)")
    parser.add_argument("--mixed-requests", type=int, default=64)
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="torch CPU threads, the same offline and served (1: two OpenMP threads on a busy 2-core "
                             "box stall each other, measured 20x slower)")
    args = parser.parse_args()

    from hpload.model import resolve_model

    model_dir = str(resolve_model(args.model))
    vocab = int(json.loads((Path(model_dir) / "config.json").read_text())["vocab_size"])
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    print(f"machine: {platform.machine()} {os.cpu_count()} CPUs, {platform.python_version()}; model {model_dir}")
    print(f"workload: {args.prompt_tokens} prompt tokens -> {args.output_tokens} output tokens (ignore_eos, greedy), "
          f"median of {args.rounds} rounds after 1 warm-up round; torch threads {args.torch_threads}\n")
    offline = Offline(model_dir, args.torch_threads)
    rows: list[dict[str, Any]] = []
    for mode in args.modes.split(","):
        for b in sizes:
            settings = HFSettings(model=model_dir, mode=mode, batch_size=b, max_batch_wait_ms=args.max_batch_wait_ms,
                                  dtype="float32", device="cpu", label=f"hf-{mode}-{b}",
                                  torch_threads=args.torch_threads)
            async with make_server(settings) as server:
                row = await paired_rounds(server, offline, b, vocab, args)
            rows.append({"mode": mode, "batch": b, **row})
            print(f"  {mode:<10} batch {b:>3}: served {row['served']:8.1f} tok/s   offline {row['offline']:8.1f} "
                  f"tok/s   ratio {row['served'] / row['offline']:.2f}", flush=True)
    print("\nmode        batch   served tok/s   offline tok/s   ratio   server CPU-s/1k tok   offline CPU-s/1k tok"
          "   CPU ratio")
    for row in rows:
        ratio = row["served"] / row["offline"]
        cpu_ratio = row["offline_cpu"] / row["served_cpu"]  # > 1: the server spends less CPU per token than offline
        flag = "" if ratio >= 0.8 else "  (< 0.8 target)"
        print(f"{row['mode']:<10} {row['batch']:>6} {row['served']:>14.1f} {row['offline']:>15.1f} {ratio:>7.2f} "
              f"{row['served_cpu']:>21.3f} {row['offline_cpu']:>22.3f} {cpu_ratio:>11.2f}{flag}")
    if args.mixed_concurrency:
        await mixed_section(args, model_dir, vocab)
    by = {(r["mode"], r["batch"]): r["served"] for r in rows}
    for b in sizes:
        if ("pipeline", b) in by and ("continuous", b) in by:
            print(f"continuous / pipeline at batch {b}: {by[('continuous', b)] / by[('pipeline', b)]:.2f}")


async def mixed_section(args: argparse.Namespace, model_dir: str, vocab: int) -> None:
    """Where continuous batching should pay: output lengths that differ, so a static batch runs as long as its longest
    request and newcomers wait for the whole batch, while the continuous manager refills slots as requests finish."""
    c = args.mixed_concurrency
    rng = random.Random(7)
    lengths = [rng.choice((8, 16, 32, 64, 128, 256)) for _ in range(args.mixed_requests)]
    print(f"\nmixed output lengths (8..256 tokens, mean {statistics.mean(lengths):.0f}), closed loop at concurrency {c}, "
          f"batch_size {c}, {len(lengths)} requests:")
    print("mode        output tok/s   ttft p50 s   ttft p90 s")
    for mode in args.modes.split(","):
        settings = HFSettings(model=model_dir, mode=mode, batch_size=c, max_batch_wait_ms=args.max_batch_wait_ms,
                              dtype="float32", device="cpu", label=f"hf-{mode}-mixed", torch_threads=args.torch_threads)
        async with make_server(settings) as server:
            rate, p50, p90 = await mixed_closed_loop(server, c, lengths, vocab, args.prompt_tokens)
        print(f"{mode:<10} {rate:>13.1f} {p50:>12.3f} {p90:>12.3f}", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
