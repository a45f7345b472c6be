"""The one exception type users see as a one-line message instead of a traceback."""

from __future__ import annotations


class HploadError(Exception):
    """A problem the user can fix. ``str(err)`` is one line naming the field or flag and the fix."""

    exit_code = 2


class ServerError(HploadError):
    """A server failed to start, died, or never became ready. The message quotes the log tail."""

    exit_code = 3


class ThresholdFailed(HploadError):
    """A run finished but broke one of the scenario's thresholds (k6-style): exit code 99."""

    exit_code = 99


def one_line(text: str, limit: int = 400) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
