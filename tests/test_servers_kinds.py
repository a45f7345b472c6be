"""The table of server kinds is the one place a kind is named, and a setting written on its model reaches both
``hpload serve`` and the child command line with no other edit."""

from __future__ import annotations

import argparse
from typing import get_args

import pytest

from hpload.servers import KINDS, HFSettings, Server, ServerSettings
from hpload.servers.cli import _NOT_FLAGS, configure, settings_flags, settings_from_args


def test_the_typed_union_and_the_table_hold_the_same_settings_models() -> None:
    union = get_args(get_args(ServerSettings)[0])
    assert set(union) == {kind.settings for kind in KINDS.values()}
    for name, kind in KINDS.items():
        assert kind.name == name
        assert issubclass(kind.server_class(), Server)


def test_serve_has_a_flag_for_every_setting_of_every_kind() -> None:
    parser = argparse.ArgumentParser()
    configure(parser)
    serve = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(serve.choices) == {name for name, kind in KINDS.items() if kind.cli}
    for name, sub in serve.choices.items():
        dests = {a.dest for a in sub._actions}
        for field in KINDS[name].settings.model_fields:
            assert field in dests or field in _NOT_FLAGS - {"label", "host", "port", "served_model_name", "api_key",
                                                             "extra_args"}, (name, field)


@pytest.mark.parametrize("values", [{}, {"mode": "continuous", "batch_size": 3, "torch_threads": 1, "device": "cpu"},
                                    {"load_format": "dummy", "max_batch_wait_ms": 0.5, "served_model_name": "x"}])
def test_hf_settings_survive_the_child_command_line(values: dict[str, object]) -> None:
    settings = HFSettings(model="/m", port=8123, **values)  # type: ignore[arg-type]
    parser = argparse.ArgumentParser()
    configure(parser)
    argv = ["hf", "--port", "8123", *settings_flags(settings)]
    if settings.served_model_name:
        argv += ["--served-model-name", settings.served_model_name]
    assert settings_from_args(parser.parse_args(argv)) == settings
