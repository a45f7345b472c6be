"""A child that dies with hpload, even when hpload is SIGKILLed (Linux ``prctl(PR_SET_PDEATHSIG)``).

The kernel sends the signal when the *thread* that forked the child exits, not the process: so it is only armed
when the child is spawned from the main thread (hpload's servers are, from the event loop), where the thread's end
is the process's end. A child spawned from another thread relies on hpload's atexit/SIGTERM clean-up alone.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
from collections.abc import Callable

PR_SET_PDEATHSIG = 1


def die_with_parent(signum: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` for ``subprocess.Popen`` that arms the parent-death signal, or None where it cannot be
    armed safely (not Linux, or not the main thread)."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    try:
        # Resolved before the fork: the function that runs between fork and exec only makes two system calls.
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    return lambda: _arm(prctl, parent, signum)


def arm_in_child(parent: int, signum: int = signal.SIGTERM) -> bool:
    """The same from inside a child already running (a ``multiprocessing`` worker, whose start hpload does not
    control): ``parent`` is the pid it was started by. False where it cannot be armed (not Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return False
    _arm(prctl, parent, signum)
    return True


def _arm(prctl: Callable[..., int], parent: int, signum: int) -> None:
    prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the signal was armed: it would never come
        os.kill(os.getpid(), signum)
