"""hpload asks vLLM for per-request metrics only where the installed build declares the flag, read from its source."""

from __future__ import annotations

from hpload.servers.vllm_features import declares, per_request_metrics_argv


def test_flag_follows_the_installed_build() -> None:
    has = declares("enable_per_request_metrics")
    assert per_request_metrics_argv([]) == (["--enable-per-request-metrics"] if has else [])
    assert not declares("no_such_vllm_field_at_all")
    # vLLM refuses the pair at start-up: the metrics come from the engine's stats.
    assert per_request_metrics_argv(["--disable-log-stats"]) == []
    # Given by the user already: not twice.
    assert per_request_metrics_argv(["--enable-per-request-metrics"]) == []
