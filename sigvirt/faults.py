"""Named fail points: every long operation is a sequence of named steps, and a test can stop
sigvirt dead at any one of them (as storage engines do: FoundationDB's BUGGIFY, TiKV's
fail-rs, etcd's gofail).

`point("version.imported")` does nothing unless the environment names that step:

    SIGVIRT_FAULT=version.imported          die the first time the step is reached
    SIGVIRT_FAULT=replica.copied@2          die the second time

Dying is SIGKILL to ourselves: no cleanup handler, no finally block, no flushed buffer runs,
exactly what a power cut or the OOM killer leaves behind. What the next command finds must
be recognized and finished or undone (tests/test_faults.py kills every step and checks).
The variable is read once; sudo drops it, so the root helper can't be made to stop.
"""

from __future__ import annotations

import os
import signal
import threading

ENV = "SIGVIRT_FAULT"


def _parse(value: str) -> tuple[str, int]:
    name, _, nth = value.partition("@")
    return name.strip(), int(nth) if nth.strip().isdigit() else 1


_WANTED = _parse(os.environ[ENV]) if os.environ.get(ENV) else None
_seen = 0
_lock = threading.Lock()


def point(name: str) -> None:
    """A named step has just completed; die here if the environment asks for it."""
    global _seen
    if _WANTED is None or name != _WANTED[0]:
        return
    with _lock:
        _seen += 1
        if _seen == _WANTED[1]:
            os.kill(os.getpid(), signal.SIGKILL)
