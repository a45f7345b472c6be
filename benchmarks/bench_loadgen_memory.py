"""Recorder memory: RSS while recording 1M synthetic requests (each with 31 inter-token gaps), snapshots cut every
10k requests as a live run would. Target: RSS under 150 MB. Peer, side by side: the same latencies kept the way
vLLM's bench client keeps them (Python lists of floats per metric, ITL lists per request).

    python benchmarks/bench_loadgen_memory.py [--requests 1000000] [--tokens 32]

Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import gc
import os
import time

import numpy as np
import psutil


def rss_mb() -> float:
    return psutil.Process(os.getpid()).memory_info().rss / 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=1_000_000)
    p.add_argument("--tokens", type=int, default=32)
    args = p.parse_args()

    from hpload.loadgen.client import RequestRecord
    from hpload.loadgen.recorder import Recorder
    from hpload.loadgen.specs import SLO

    rng = np.random.default_rng(0)
    gaps_ms = rng.lognormal(np.log(20), 0.3, size=(4096, args.tokens - 1))
    ttfts_ms = rng.lognormal(np.log(50), 0.5, size=4096)
    base = rss_mb()
    recorder = Recorder("mem", SLO(ttft_ms=100))
    peak = base
    t0 = time.perf_counter()
    for i in range(args.requests):
        rec = RequestRecord(i, False)
        rec.send_ns = 1_000_000_000 + i * 1000
        rec.first_ns = rec.send_ns + int(ttfts_ms[i % 4096] * 1e6)
        rec.itl_ns = [int(g * 1e6) for g in gaps_ms[i % 4096]]
        rec.last_ns = rec.first_ns + sum(rec.itl_ns)
        rec.done_ns = rec.last_ns
        rec.chunk_tokens = rec.usage_out = args.tokens
        rec.usage_in = 128
        recorder.record(rec)
        if i % 10_000 == 9_999:
            recorder.snapshot("measure", None)
            peak = max(peak, rss_mb())
    elapsed = time.perf_counter() - t0
    result = recorder.result({}, "")
    encoded = sum(len(h["hdr"]) for h in result.to_dict()["histograms"].values())
    peak = max(peak, rss_mb())
    print(f"hpload recorder: {args.requests:,} requests, {result.histograms['itl'].count:,} ITL samples")
    print(f"  RSS before {base:.1f} MB, peak {peak:.1f} MB (growth {peak - base:.1f} MB); target < 150 MB")
    print(f"  {args.requests / elapsed:,.0f} requests recorded per second; encoded histograms {encoded / 1024:.1f} KiB")
    print(f"  p99 ttft {result.summary['p99_ttft_ms']:.2f} ms, p99 itl {result.summary['p99_itl_ms']:.2f} ms")
    del recorder, result
    gc.collect()

    # The peer's way: every latency kept as a Python float until the end.
    base2 = rss_mb()
    ttft: list[float] = []
    itl: list[list[float]] = []
    e2el: list[float] = []
    for i in range(args.requests):
        ttft.append(float(ttfts_ms[i % 4096]) / 1000)
        gaps = [float(g) / 1000 for g in gaps_ms[i % 4096]]
        itl.append(gaps)
        e2el.append(ttft[-1] + sum(gaps))
    peak2 = rss_mb()
    print(f"lists of floats (vLLM bench client style): peak {peak2:.1f} MB (growth {peak2 - base2:.1f} MB)")
    print(f"ratio peer growth / hpload growth: {(peak2 - base2) / max(peak - base, 0.1):.0f}x")


if __name__ == "__main__":
    main()
