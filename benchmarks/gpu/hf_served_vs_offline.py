"""On a GPU: the transformers wrapper's served output tokens/s against an offline ``model.generate`` of the same
random-weight model on the same card, and against offline generate that also reads each step's tokens back to the
host (as any streaming server must). Separates the wrapper's own per-step cost from transformers' and the sync's.

    python benchmarks/gpu/hf_served_vs_offline.py --model /root/models/llama-1b [--batch-sizes 1,32]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import httpx  # noqa: E402
from bench_hf_server import _one, prompts  # noqa: E402

from hpload.servers import HFSettings, make_server  # noqa: E402


class ReadBack:
    """A stopping criterion that copies the newest tokens to the host every step, as a streaming server does."""

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        input_ids[:, -1].tolist()
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def offline(model: Any, batch: list[list[int]], n: int, read_back: bool) -> float:
    import torch
    from transformers import StoppingCriteriaList

    ids = torch.tensor(batch, dtype=torch.long, device=model.device)
    extra = {"stopping_criteria": StoppingCriteriaList([ReadBack()])} if read_back else {}
    torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                             min_new_tokens=n, pad_token_id=model.config.pad_token_id, **extra)
    torch.cuda.synchronize()
    return (out.shape[1] - ids.shape[1]) * len(batch) / (time.perf_counter() - start)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--batch-sizes", default="1,32")
    parser.add_argument("--output-tokens", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).to("cuda").eval()
    vocab = min(config.vocab_size, 4096)
    print(f"{torch.cuda.get_device_name()}  model {args.model}  {args.prompt_tokens} prompt / {args.output_tokens} "
          "output tokens, greedy, medians")
    print(f"{'batch':>5} {'served':>9} {'offline':>9} {'offl+sync':>9} {'served/offline':>15}")
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        settings = HFSettings(model=args.model, load_format="dummy", dtype="bfloat16", device="cuda",
                              batch_size=batch, max_batch_wait_ms=20)
        served, plain, synced = [], [], []
        async with make_server(settings) as server:
            limits = httpx.Limits(max_connections=batch + 4)
            async with httpx.AsyncClient(base_url=server.base_url, timeout=600, limits=limits) as client:
                for r in range(args.rounds + 1):
                    rows = prompts(batch, args.prompt_tokens, vocab, seed=r)
                    start = time.perf_counter()
                    counts = await asyncio.gather(*[_one(client, server, p, args.output_tokens) for p in rows])
                    elapsed = time.perf_counter() - start
                    if r:
                        served.append(sum(counts) / elapsed)
                        plain.append(offline(model, rows, args.output_tokens, read_back=False))
                        synced.append(offline(model, rows, args.output_tokens, read_back=True))
        med = statistics.median
        print(f"{batch:>5} {med(served):>9.1f} {med(plain):>9.1f} {med(synced):>9.1f} {med(served) / med(plain):>15.2f}")


if __name__ == "__main__":
    asyncio.run(main())
