"""The floor for client overhead: the least a streaming client can do. aiohttp, one coroutine per stream, a monotonic
stamp before the request and when the first body bytes arrive, chunks counted, the last data line kept (it carries
the usage and, from vLLM with --enable-per-request-metrics, the server's per-request ``metrics``). Nothing else.

    python benchmarks/minimal_client.py URL MODEL --prompts FILE --max-tokens 128 --concurrency 32 --out OUT.jsonl
FILE: one JSON string (a prompt) per line. OUT: one JSON line per request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import aiohttp


async def one(session: aiohttp.ClientSession, url: str, body: dict) -> dict:
    t0 = time.perf_counter_ns()
    first_ns, chunks, last = 0, 0, b""
    async with session.post(url, json=body) as resp:
        async for data in resp.content.iter_any():
            if not first_ns:
                first_ns = time.perf_counter_ns()
            chunks += data.count(b"data: ")
            lines = [x for x in data.split(b"\n") if x.startswith(b"data: {")]
            last = lines[-1] if lines else last
    end_ns = time.perf_counter_ns()
    return {"ttft_ms": (first_ns - t0) / 1e6, "e2el_ms": (end_ns - t0) / 1e6, "chunks": chunks,
            "last": last[6:].decode(), "status": resp.status}  # fmt: skip


async def run(url: str, model: str, prompts: list[str], max_tokens: int, concurrency: int) -> tuple[list[dict], float]:
    queue = list(reversed(prompts))
    out: list[dict] = []

    async def worker(session: aiohttp.ClientSession) -> None:
        while queue:
            body = {"model": model, "prompt": queue.pop(), "max_tokens": max_tokens, "stream": True,
                    "ignore_eos": True, "stream_options": {"include_usage": True}}  # fmt: skip
            out.append(await one(session, url.rstrip("/") + "/v1/completions", body))

    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=None)) as session:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        return out, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("url"), p.add_argument("model"), p.add_argument("--prompts", required=True)
    p.add_argument("--max-tokens", type=int, default=128), p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    prompts = [json.loads(line) for line in open(a.prompts)]
    records, duration_s = asyncio.run(run(a.url, a.model, prompts, a.max_tokens, a.concurrency))
    with open(a.out, "w") as fh:
        fh.write(json.dumps({"duration_s": duration_s}) + "\n")
        fh.writelines(json.dumps(r) + "\n" for r in records)


if __name__ == "__main__":
    main()
