"""The transformers wrapper's per-request ``metrics`` object: the same names and meanings as vLLM's
``--enable-per-request-metrics`` (see hpload.loadgen.server_timing), so one client reads both servers alike.

Stamps are ``perf_counter_ns`` in the server process: arrival when the app took the request, scheduled when a batch
took it (pipeline mode; continuous mode hides its scheduler, so there queue_time_ms is left out, as vLLM leaves out
a field whose stamps it lacks), first and last token when the engine delivered them to the event loop.
"""

from __future__ import annotations

from typing import Any


def per_request_metrics(stream: Any) -> dict[str, float]:
    out: dict[str, float] = {}
    scheduled, first, last = stream.scheduled_ns, stream.first_token_ns, stream.last_token_ns
    start = scheduled if scheduled is not None else stream.arrival_ns
    if scheduled is not None:
        out["queue_time_ms"] = (scheduled - stream.arrival_ns) / 1e6
    if first is not None:
        out["time_to_first_token_ms"] = (first - start) / 1e6
    if first is not None and last is not None:
        out["generation_time_ms"] = (last - first) / 1e6
        if stream.output_tokens > 1:
            out["mean_itl_ms"] = (last - first) / 1e6 / (stream.output_tokens - 1)
        if last > start:
            out["tokens_per_second"] = stream.output_tokens / ((last - start) / 1e9)
    return out
