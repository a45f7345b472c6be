"""Tables for issue 21 from what benchmarks/gpu/issue21.sh leaves: hpload's points beside the CPU sampler's ticks.

    python3 issue21_summary.py ROOT                 # every run: a Markdown table and ROOT/summary.json
    python3 issue21_summary.py ROOT --run LABEL     # one line for one run (the script prints it as it goes)
    python3 issue21_summary.py ROOT --agreement     # part B: the agreement benchmark's rounds (B-round*.log), medians

ROOT holds ``A/<config>/c<streams>-r<repeat>/points/*.json`` (hpload results) and ``cpu.jsonl`` (proc_cpu.py). A run's
CPU figures are the means over the sampler's ticks that carried its label and in which vLLM's processes together
used at least half of their peak in that run (so the client's start-up and the last streams draining are left out). Per role: the sum over its processes, the busiest process, and
that process's busiest thread, all in percent of one core.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

ROLES = (
    "api_server",
    "vllm_main",
    "engine_core",
    "vllm_helper",
    "dp_coordinator",
    "client_hpload",
    "client_vllm_bench",
    "client_minimal",
)


def load_cpu(path: Path) -> dict[str, list[dict[str, Any]]]:
    by_label: dict[str, list[dict[str, Any]]] = defaultdict(list)
    if not path.exists():
        return by_label
    with path.open() as f:
        for line in f:
            try:
                tick = json.loads(line)
            except json.JSONDecodeError:
                continue  # the sampler was stopped mid-line
            by_label[tick["label"]].append(tick)
    return by_label


VLLM_ROLES = ("api_server", "vllm_main", "engine_core", "worker")


def cpu_figures(ticks: list[dict[str, Any]]) -> dict[str, Any]:
    # A run's label also covers the client's start-up and its last streams draining; the steady state is the ticks
    # where vLLM's processes together use at least half of their peak within the run.
    def vllm_cpu(t: dict[str, Any]) -> float:
        return sum(p["cpu"] for p in t["procs"] if p["role"] in VLLM_ROLES)

    peak = max((vllm_cpu(t) for t in ticks), default=0.0)
    ticks = [t for t in ticks if peak > 0 and vllm_cpu(t) >= 0.5 * peak] or ticks
    out: dict[str, Any] = {"ticks": len(ticks)}
    gpu = [t["gpu_util"] for t in ticks if t.get("gpu_util") is not None]
    out["gpu_util"] = round(statistics.mean(gpu), 1) if gpu else None
    for role in ROLES:
        sums, tops, threads, counts = [], [], [], []
        for t in ticks:
            rows = [p for p in t["procs"] if p["role"] == role]
            if not rows:
                continue
            sums.append(sum(p["cpu"] for p in rows))
            busiest = max(rows, key=lambda p: p["cpu"])
            tops.append(busiest["cpu"])
            threads.append(busiest["top_thread_cpu"] or 0.0)
            counts.append(len(rows))
        if sums:
            out[role] = {
                "procs": max(counts),
                "sum": round(statistics.mean(sums), 1),
                "max_proc": round(statistics.mean(tops), 1),
                "max_thread": round(statistics.mean(threads), 1),
            }
    return out


def _r(v: float | None) -> float | None:
    return round(v, 1) if v is not None else None


def point_figures(run_dir: Path) -> dict[str, Any] | None:
    points = sorted(p for p in (run_dir / "points").glob("*.json") if not p.name.endswith(".point.json"))
    if not points:
        return None
    d = json.loads(points[0].read_text())
    s, h = d["summary"], d.get("health", {})
    sm = d.get("server_metrics", {}) or {}
    return {
        "completed": s.get("completed"),
        "failed": s.get("failed"),
        "out_tok_s": round(s.get("output_throughput", 0.0), 1),
        "mean_ttft_ms": round(s.get("mean_ttft_ms", 0.0), 1),
        "p99_ttft_ms": round(s.get("p99_ttft_ms", 0.0), 1),
        "mean_tpot_ms": round(s.get("mean_tpot_ms", 0.0), 2),
        "duration_s": round(s.get("duration", 0.0), 1),
        "in_tok_per_req": round(s.get("total_input_tokens", 0) / max(s.get("completed") or 1, 1), 1),
        "client_cpu_percent": round(h.get("cpu_percent", 0.0), 1),
        "client_loop_lag_p99_ms": h.get("loop_lag_p99_ms"),
        "client_bottleneck": h.get("bottleneck"),
        "server_ttft_mean_ms": round(sm["ttft_mean_ms"], 1) if sm.get("ttft_mean_ms") is not None else None,
        # per request, from vLLM's --enable-per-request-metrics where the hpload tree reads them (issue 15)
        "mean_server_queue_ms": _r(s.get("mean_server_queue_ms")),
        "mean_ttft_gap_ms": _r(s.get("mean_ttft_gap_ms")),
        "mean_ttft_outside_engine_ms": _r(s.get("mean_ttft_outside_engine_ms")),
        "gpu": d.get("gpu"),
        "warnings": d.get("warnings", []),
    }


def fmt_role(fig: dict[str, Any], role: str) -> str:
    r = fig.get(role)
    if not r:
        return "-"
    if r["procs"] > 1:
        return f"{r['procs']}x, sum {r['sum']:.0f}, max {r['max_proc']:.0f} ({r['max_thread']:.0f})"
    return f"{r['max_proc']:.0f} ({r['max_thread']:.0f})"


def one_line(label: str, pt: dict[str, Any] | None, fig: dict[str, Any]) -> str:
    if pt is None:
        return f"{label}: no result"
    api = fig.get("api_server") or fig.get("vllm_main")
    api_txt = fmt_role(fig, "api_server" if fig.get("api_server") else "vllm_main") if api else "-"
    return (
        f"{label}: {pt['out_tok_s']:.0f} tok/s, ttft mean {pt['mean_ttft_ms']:.0f} ms, tpot {pt['mean_tpot_ms']:.1f} ms, "
        f"client cpu {pt['client_cpu_percent']:.0f}% (busiest {fmt_role(fig, 'client_hpload')}) "
        f"lag p99 {pt['client_loop_lag_p99_ms']} ms; "
        f"api {api_txt}; engine {fmt_role(fig, 'engine_core')}; worker {fmt_role(fig, 'worker')}; helpers {fmt_role(fig, 'vllm_helper')}; "
        f"gpu {fig.get('gpu_util')}%"
        + (
            f"; server queue {pt['mean_server_queue_ms']} ms, outside engine {pt['mean_ttft_outside_engine_ms']} ms"
            if pt.get("mean_server_queue_ms") is not None
            else ""
        )
    )


def agreement_rows(root: Path) -> list[dict[str, Any]]:
    """The rows bench_agreement.py printed, one log per round (each invocation ran one round)."""
    rows = []
    for log in sorted(root.glob("B-round*.log")):
        rnd = int(log.stem.removeprefix("B-round"))
        in_table = False
        for line in log.read_text().splitlines():
            if line.startswith("round "):
                in_table = True
                continue
            if in_table and not line.strip():
                break
            parts = line.split()
            if not in_table or len(parts) < 9 or not parts[0].isdigit():
                continue
            per = parts[8].split("/") if re.fullmatch(r"[\d.]+/[\d.]+/[\d.]+", parts[8]) else None  # else "n/a ..."
            rows.append(
                {
                    "round": rnd,
                    "streams": int(parts[1]),
                    "client": parts[2],
                    "completed": int(parts[3]),
                    "out_tok_s": float(parts[4]),
                    "gap_mean_ms": float(parts[6]),  # client mean TTFT - server mean TTFT (/metrics deltas)
                    "outside_engine_mean_ms": float(per[0]) if per else None,
                    "outside_engine_p50_ms": float(per[1]) if per else None,
                    "outside_engine_p99_ms": float(per[2]) if per else None,
                    "server_itl_mean_ms": float(parts[-1]),
                }
            )
    return rows


def agreement_table(rows: list[dict[str, Any]]) -> None:
    def med(vals: list[float | None]) -> str:
        v = [x for x in vals if x is not None]
        return f"{statistics.median(v):.1f}" if v else "n/a"

    def each(vals: list[float | None]) -> str:
        return " / ".join(f"{x:.1f}" if x is not None else "n/a" for x in vals)

    print(
        "| streams | client | out tok/s median (rounds) | TTFT gap to /metrics, mean ms: median (rounds) | "
        "outside the engine per request, p50 ms: median (rounds) | server ITL mean ms (rounds) |"
    )
    print("|---|---|---|---|---|---|")
    for streams in sorted({r["streams"] for r in rows}):
        for client in dict.fromkeys(r["client"] for r in rows):
            mine = sorted(
                (r for r in rows if r["streams"] == streams and r["client"] == client), key=lambda r: r["round"]
            )
            tput = [r["out_tok_s"] for r in mine]
            gap = [r["gap_mean_ms"] for r in mine]
            per = [r["outside_engine_p50_ms"] for r in mine]
            itl = [r["server_itl_mean_ms"] for r in mine]
            print(
                f"| {streams} | {client} | {med(tput)} ({each(tput)}) | {med(gap)} ({each(gap)}) | "
                f"{med(per)} ({each(per)}) | {each(itl)} |"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path)
    ap.add_argument("--run", help="one run's label, e.g. A/base/c512-r1")
    ap.add_argument("--agreement", action="store_true", help="part B's table from B-round*.log")
    args = ap.parse_args()
    if args.agreement:
        rows = agreement_rows(args.root)
        (args.root / "agreement.json").write_text(json.dumps(rows, indent=1))
        agreement_table(rows)
        return
    cpu = load_cpu(args.root / "cpu.jsonl")
    if args.run:
        print(one_line(args.run, point_figures(args.root / args.run), cpu_figures(cpu.get(args.run, []))))
        return
    rows = []
    for run_dir in sorted((args.root / "A").glob("*/c*-r*")):
        label = str(run_dir.relative_to(args.root))
        cfg, run = label.split("/")[1:]
        conc, rep = run[1:].split("-r")
        pt = point_figures(run_dir)
        rows.append(
            {
                "label": label,
                "config": cfg,
                "streams": int(conc),
                "repeat": int(rep),
                "point": pt,
                "cpu": cpu_figures(cpu.get(label, [])),
            }
        )
    (args.root / "summary.json").write_text(json.dumps(rows, indent=1))
    print(
        "| config | streams | rep | out tok/s | mean TTFT ms | mean TPOT ms | client CPU % all workers (busiest one) / loop lag p99 ms | "
        "API server CPU % (top thread) | engine core CPU % (top thread) | GPU util % |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        pt, fig = r["point"], r["cpu"]
        if pt is None:
            print(f"| {r['config']} | {r['streams']} | {r['repeat']} | no result | | | | | | |")
            continue
        api_role = "api_server" if fig.get("api_server") else "vllm_main"
        busiest = f"{fig['client_hpload']['max_proc']:.0f}" if fig.get("client_hpload") else "-"
        print(
            f"| {r['config']} | {r['streams']} | {r['repeat']} | {pt['out_tok_s']:.0f} | {pt['mean_ttft_ms']:.0f} | "
            f"{pt['mean_tpot_ms']:.2f} | {pt['client_cpu_percent']:.0f} ({busiest}) / {pt['client_loop_lag_p99_ms']} | "
            f"{fmt_role(fig, api_role)} | {fmt_role(fig, 'engine_core')} | {fig.get('gpu_util')} |"
        )


if __name__ == "__main__":
    main()
