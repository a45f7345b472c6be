"""A tuning process that dies mid-trial (host lost, OOM kill, SIGKILL) must not leave its trial RUNNING forever.

Every trial is measured under Optuna's heartbeat: a thread records a beat every ``tune.heartbeat_s`` seconds in the
storage while the point is measured. Before each ask, and once more before a process leaves the study, any process
sharing the study fails the trials whose beat is older than the grace period (Optuna's ``fail_stale_trials``), and
``RetryFailedTrialCallback`` puts the same point back in the queue (at most ``MAX_RETRY`` times: a point that kills
every host that tries it ends failed, not looping). The ask/tell loop has no ``study.optimize`` to do either of these,
so hpload does them here.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from typing import Any

DEFAULT_HEARTBEAT_S = 10
GRACE_BEATS = 3  # a trial is stale after this many missed beats (a busy database can delay one)
MAX_RETRY = 2


def heartbeat_storage(url: str | None, heartbeat_s: int = DEFAULT_HEARTBEAT_S) -> Any:
    """An RDB storage with heartbeats for a database server's URL (the storage several hosts share); anything else
    as given. A local SQLite study has one process at a time, whose dead trials the next run recovers by pid
    (``Tuner._recover_stale``), and a second writer thread would only meet SQLite's database lock."""
    if url is None or not url.startswith(("postgresql", "mysql")):
        return url
    from optuna.storages import RDBStorage, RetryFailedTrialCallback

    callback = RetryFailedTrialCallback(max_retry=MAX_RETRY)
    # Optuna renamed failed_trial_callback; take whichever this Optuna has, so no deprecation warning is printed.
    key = ("heartbeat_stale_trial_callback"
           if "heartbeat_stale_trial_callback" in inspect.signature(RDBStorage.__init__).parameters
           else "failed_trial_callback")  # fmt: skip
    kwargs: dict[str, Any] = {key: callback}
    return RDBStorage(url, heartbeat_interval=heartbeat_s, grace_period=heartbeat_s * GRACE_BEATS, **kwargs)


def fail_stale(study: Any) -> None:
    """Fail (and re-queue) trials whose process stopped beating; a no-op without heartbeats."""
    from optuna.storages import fail_stale_trials

    with contextlib.suppress(Exception):  # a transient database error must not end this process's study
        fail_stale_trials(study)


@contextlib.contextmanager
def beating(study: Any, trial: Any) -> Iterator[None]:
    """Record the trial's heartbeat while the block runs."""
    from optuna.storages._heartbeat import get_heartbeat_thread

    thread = get_heartbeat_thread(trial._trial_id, study._storage)
    thread.start()
    try:
        yield
    finally:
        thread.join()


def settle(study: Any) -> None:
    """Before leaving the study: wait (at most one grace period) until no trial is RUNNING, failing stale ones. The
    last process to leave thereby fails a dead host's trial even when it died after this process's last ask."""
    import time

    from optuna.storages._heartbeat import is_heartbeat_enabled
    from optuna.trial import TrialState

    storage = study._storage
    if not is_heartbeat_enabled(storage):
        return
    interval = float(storage.get_heartbeat_interval() or DEFAULT_HEARTBEAT_S)
    deadline = time.monotonic() + interval * (GRACE_BEATS + 1)
    while True:
        fail_stale(study)
        if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) or time.monotonic() > deadline:
            return
        time.sleep(min(interval, 1.0))
