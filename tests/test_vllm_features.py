"""hpload asks vLLM for per-request metrics and cached-token details only where the installed build declares the flag, read from its source."""

from __future__ import annotations

from hpload.servers.vllm_features import declares, reporting_argv


def test_flag_follows_the_installed_build() -> None:
    has = declares("enable_per_request_metrics")
    details = ["--enable-prompt-tokens-details"] if declares("enable_prompt_tokens_details") else []
    assert reporting_argv([]) == (["--enable-per-request-metrics"] if has else []) + details
    assert not declares("no_such_vllm_field_at_all")
    # vLLM refuses the pair at start-up: the metrics come from the engine's stats.
    assert reporting_argv(["--disable-log-stats"]) == details
    # Given by the user already: not twice.
    assert reporting_argv(["--enable-per-request-metrics", "--enable-prompt-tokens-details"]) == []
