"""The server's own view: scrape Prometheus ``/metrics`` before and after a run and difference the two.

Only the server knows when a request really reached its engine, so its TTFT beside the client's separates engine time
from client and HTTP front-end overhead. Metric names are matched by suffix (``vllm:time_to_first_token_seconds``,
or the same suffix under another prefix such as the transformers wrapper's), and summed over label sets.
"""

from __future__ import annotations

import math
from typing import Any

import httpx2

Samples = dict[str, list[tuple[dict[str, str], float]]]

# result key -> histogram name suffixes, the first present wins
HISTOGRAMS = {
    "ttft": ("time_to_first_token_seconds",),
    "tpot": ("request_time_per_output_token_seconds", "time_per_output_token_seconds"),
    "itl": ("inter_token_latency_seconds", "time_per_output_token_seconds"),
    "queue": ("request_queue_time_seconds",),
    "e2el": ("e2e_request_latency_seconds",),
}
COUNTERS = {
    "generation_tokens": "generation_tokens_total",
    "prompt_tokens": "prompt_tokens_total",
    "requests_succeeded": "request_success_total",
}
TTFT_GAP_MS = 10.0  # flag only gaps above this ...
TTFT_GAP_FRACTION = 0.25  # ... and above this share of the client's mean TTFT


def parse(text: str) -> Samples:
    """Prometheus text format -> {name: [(labels, value)]}. Comments, timestamps and exemplars are ignored."""
    out: Samples = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        if "{" in line:
            name, _, rest = line.partition("{")
            label_text, _, value_text = rest.rpartition("}")
            labels = _labels(label_text)
        else:
            name, _, value_text = line.partition(" ")
            labels = {}
        parts = value_text.split()
        if not parts:
            continue
        try:
            value = float(parts[0])
        except ValueError:
            continue
        out.setdefault(name.strip(), []).append((labels, value))
    return out


def _labels(text: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    i = 0
    while i < len(text):
        eq = text.find("=", i)
        if eq < 0:
            break
        key = text[i:eq].strip().lstrip(",").strip()
        j = eq + 2  # skip ="
        buf = []
        while j < len(text) and text[j] != '"':
            if text[j] == "\\" and j + 1 < len(text):
                j += 1
            buf.append(text[j])
            j += 1
        labels[key] = "".join(buf)
        i = j + 1
    return labels


async def scrape(url: str, headers: dict[str, str] | None = None, timeout_s: float = 3.0) -> Samples | None:
    """One scrape, or None when the server has no metrics endpoint (that is not an error)."""
    try:
        async with httpx2.AsyncClient(timeout=timeout_s) as client:
            resp = await client.get(url, headers=headers or {})
    except httpx2.HTTPError:
        return None
    if resp.status_code != 200:
        return None
    return parse(resp.text)


def _find(samples: Samples, suffix: str) -> str | None:
    for name in samples:
        if name.endswith(suffix):
            return name
    return None


def _total(samples: Samples, name: str | None, *, le: str | None = None) -> float:
    if name is None:
        return 0.0
    return sum(v for labels, v in samples.get(name, []) if le is None or labels.get("le") == le)


def _buckets(samples: Samples, name: str) -> dict[float, float]:
    out: dict[float, float] = {}
    for labels, v in samples.get(name, []):
        le = labels.get("le")
        if le is not None:
            bound = math.inf if le == "+Inf" else float(le)
            out[bound] = out.get(bound, 0.0) + v
    return out


def _quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """Linear interpolation inside cumulative buckets, as PromQL's histogram_quantile."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return prev_bound
            if count == prev_count:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    return prev_bound


def server_side(before: Samples | None, after: Samples | None) -> dict[str, Any] | None:
    """What the server saw during the run (after - before): means and p50/p99 in ms, token and request counts."""
    if after is None:
        return None
    before = before or {}
    out: dict[str, Any] = {}
    for key, suffixes in HISTOGRAMS.items():
        for suffix in suffixes:
            count_name = _find(after, suffix + "_count")
            if count_name is None:
                continue
            base = count_name[: -len("_count")]
            n = _total(after, count_name) - _total(before, count_name)
            total = _total(after, base + "_sum") - _total(before, base + "_sum")
            if n <= 0:
                break
            out[f"{key}_count"] = int(n)
            out[f"{key}_mean_ms"] = 1000 * total / n
            b_after, b_before = _buckets(after, base + "_bucket"), _buckets(before, base + "_bucket")
            cum = sorted((bound, c - b_before.get(bound, 0.0)) for bound, c in b_after.items())
            for q, label in ((0.5, "p50"), (0.99, "p99")):
                v = _quantile(cum, q)
                if v is not None:
                    out[f"{key}_{label}_ms"] = 1000 * v
            break
    for key, suffix in COUNTERS.items():
        name = _find(after, suffix)
        if name is not None:
            out[key] = int(_total(after, name) - _total(before, name))
    return out or None


def ttft_gap_warning(client_mean_ttft_ms: float, server: dict[str, Any] | None) -> str | None:
    """A warning when the client's TTFT exceeds the server's by more than the thresholds."""
    if not server or server.get("ttft_mean_ms") is None or client_mean_ttft_ms <= 0:
        return None
    gap = client_mean_ttft_ms - float(server["ttft_mean_ms"])
    if gap > TTFT_GAP_MS and gap > TTFT_GAP_FRACTION * client_mean_ttft_ms:
        return (
            f"client-minus-server TTFT gap {gap:.1f} ms (client {client_mean_ttft_ms:.1f}, server"
            f" {server['ttft_mean_ms']:.1f}): client or HTTP front-end overhead"
        )
    return None
