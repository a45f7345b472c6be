"""The server's own per-request timings, joined with the client's figures for the same request.

vLLM started with ``--enable-per-request-metrics`` (and hpload's transformers wrapper, always) puts a ``metrics``
object in the last streamed chunk, the usage trailer (so only when ``stream_options.include_usage`` is asked, which
hpload always does), or in the body of a whole reply. No per-request opt-in exists in vLLM 0.32. Its fields, from
the engine core's monotonic stamps (vLLM ``build_per_request_timing_metrics``):

- ``queue_time_ms``: queued -> first scheduled (waiting for a batch slot);
- ``time_to_first_token_ms``: first scheduled -> first token. NOT vLLM's Prometheus TTFT, which runs from the
  front end's arrival: this one excludes the queue, tokenisation, the HTTP front end and the IPC to the engine;
- ``generation_time_ms``: first -> last token; ``mean_itl_ms``: that over (tokens - 1); ``tokens_per_second``.

So for one request the client's TTFT always spans ``queue + ttft`` of the server: ``ttft_gap`` (client TTFT minus
server TTFT) includes the server queue, and ``ttft_outside_engine`` (client TTFT - server queue - server TTFT) is what
neither the scheduler nor the model spent: HTTP front end, tokenisation, IPC, detokenisation, loopback and the client.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from hpload.loadgen.vocabulary import SERVER_TIMING_METRICS

# the server's field -> the name in hpload's --save-requests lines
FIELDS = {
    "time_to_first_token_ms": "server_ttft_ms",
    "queue_time_ms": "server_queue_ms",
    "generation_time_ms": "server_generation_ms",
    "mean_itl_ms": "server_mean_itl_ms",
    "tokens_per_second": "server_tokens_per_second",
}
# per-run HdrHistograms (microseconds), beside the client's own
METRICS = SERVER_TIMING_METRICS  # named once, in the result vocabulary


def take(obj: dict[str, Any]) -> dict[str, float] | None:
    """The numeric fields of a reply's ``metrics`` object, or None when it has none."""
    raw = obj.get("metrics")
    if not isinstance(raw, dict):
        return None
    out = {k: float(v) for k, v in raw.items() if k in FIELDS and isinstance(v, int | float)}
    return out or None


def request_fields(server: dict[str, float], client_ttft_ms: float | None) -> dict[str, float]:
    """The --save-requests fields for one request: the server's figures, and the gaps when the client has a TTFT."""
    out = {FIELDS[k]: v for k, v in server.items()}
    ttft = server.get("time_to_first_token_ms")
    if client_ttft_ms is not None and ttft is not None:
        out["ttft_gap_ms"] = client_ttft_ms - ttft
        queue = server.get("queue_time_ms")
        if queue is not None:
            out["ttft_outside_engine_ms"] = client_ttft_ms - ttft - queue
    return out


def record(add: Callable[[str, int], None], server: dict[str, float], client_ttft_ns: int) -> None:
    """Fold one request into the run's histograms. A gap below zero (clock conversion, a few microseconds) is kept
    as zero by the histogram; the per-request line keeps the signed value."""
    ttft = server.get("time_to_first_token_ms")
    queue = server.get("queue_time_ms")
    if queue is not None:
        add("server_queue", round(queue * 1000))
    if ttft is not None:
        gap_us = client_ttft_ns // 1000 - round(ttft * 1000)
        add("ttft_gap", gap_us)
        if queue is not None:
            add("ttft_outside_engine", gap_us - round(queue * 1000))


def summary_lines(summary: Mapping[str, Any]) -> list[str]:
    """Human lines for a run's summary (console report, TUI); empty when the server gave no per-request timings."""
    if "mean_ttft_gap_ms" not in summary:
        return []
    lines = []
    for name, what in (
        ("ttft_gap", "client - server TTFT per request"),
        ("ttft_outside_engine", "  of which outside the engine (minus server queue)"),
        ("server_queue", "server queue per request"),
    ):
        if f"mean_{name}_ms" in summary:
            lines.append(
                f"{what}: mean {summary[f'mean_{name}_ms']:.2f} p50 {summary[f'median_{name}_ms']:.2f}"
                f" p99 {summary[f'p99_{name}_ms']:.2f} max {summary[f'max_{name}_ms']:.2f} ms"
            )
    return lines
