"""Prometheus text exposition for the transformers wrapper.

Names mirror vLLM's (``vllm:num_requests_waiting`` -> ``hf:num_requests_waiting``, same units and bucket edges for
the latency histograms), so telemetry code reads both servers by swapping the prefix, and loadgen can compare the
server's own TTFT/TPOT with what the client measured. Written by hand: the format is a few lines and the wrapper
should not depend on prometheus_client.
"""

from __future__ import annotations

import bisect
import threading

PREFIX = "hf:"

TTFT_BUCKETS_S = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0)
TPOT_BUCKETS_S = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0)
E2E_BUCKETS_S = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0)


class Histogram:
    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...]) -> None:
        self.name = PREFIX + name
        self.help = help_text
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last slot is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        cumulative = 0
        for edge, n in zip(self.buckets, self.counts, strict=False):
            cumulative += n
            lines.append(f'{self.name}_bucket{{le="{edge}"}} {cumulative}')
        lines.append(f'{self.name}_bucket{{le="+Inf"}} {self.count}')
        lines.append(f"{self.name}_sum {self.sum}")
        lines.append(f"{self.name}_count {self.count}")
        return lines


class ServerMetrics:
    """Counters and histograms, updated from the event loop and read by /metrics."""

    def __init__(self, model: str) -> None:
        self.model = model
        self._lock = threading.Lock()
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.finished: dict[str, int] = {}
        self.ttft = Histogram("time_to_first_token_seconds", "Time to first token, server side.", TTFT_BUCKETS_S)
        self.tpot = Histogram("time_per_output_token_seconds", "Mean gap between output tokens of a request.", TPOT_BUCKETS_S)
        self.e2e = Histogram("e2e_request_latency_seconds", "Arrival to last token, server side.", E2E_BUCKETS_S)
        self.batch_sizes = Histogram("batch_size", "Requests per generate() batch at its start.", tuple(float(2**i) for i in range(11)))

    def request_done(self, reason: str, prompt_tokens: int, output_tokens: int, arrival_ns: int, first_ns: int | None,
                     last_ns: int | None) -> None:
        with self._lock:
            self.finished[reason] = self.finished.get(reason, 0) + 1
            self.prompt_tokens += prompt_tokens
            if first_ns is not None:
                self.ttft.observe((first_ns - arrival_ns) / 1e9)
            if last_ns is not None:
                self.e2e.observe((last_ns - arrival_ns) / 1e9)
                if first_ns is not None and output_tokens > 1:
                    self.tpot.observe((last_ns - first_ns) / 1e9 / (output_tokens - 1))

    def tokens_generated(self, n: int) -> None:
        with self._lock:
            self.generation_tokens += n

    def render(self, *, waiting: int, running: int) -> str:
        p = PREFIX
        with self._lock:
            lines = [
                f"# HELP {p}num_requests_waiting Requests queued, not yet in a batch.",
                f"# TYPE {p}num_requests_waiting gauge",
                f"{p}num_requests_waiting {waiting}",
                f"# HELP {p}num_requests_running Requests in the running batch.",
                f"# TYPE {p}num_requests_running gauge",
                f"{p}num_requests_running {running}",
                f"# HELP {p}prompt_tokens_total Prompt tokens of finished requests.",
                f"# TYPE {p}prompt_tokens_total counter",
                f"{p}prompt_tokens_total {self.prompt_tokens}",
                f"# HELP {p}generation_tokens_total Output tokens generated.",
                f"# TYPE {p}generation_tokens_total counter",
                f"{p}generation_tokens_total {self.generation_tokens}",
                f"# HELP {p}request_success_total Finished requests by finish reason.",
                f"# TYPE {p}request_success_total counter",
            ]
            lines += [f'{p}request_success_total{{finished_reason="{r}"}} {n}' for r, n in sorted(self.finished.items())]
            for hist in (self.ttft, self.tpot, self.e2e, self.batch_sizes):
                lines += hist.render()
        return "\n".join(lines) + "\n"
