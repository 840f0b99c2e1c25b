"""Deterministic kill points for the fault-injection tests.

Writers call `kill_point(name)` at the moments a crash would hurt most (inside a checkpoint write, between moving the
old copy aside and renaming the new one in, inside the removal of the old copy). When the environment variable
POLYDISTILL_KILL_AT is `name` or `name@N`, the process kills itself with SIGKILL at the N-th (default: first) time
it reaches that point, exactly as `kill -9` would. Unset, a kill point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

KILL_AT_VARIABLE = "POLYDISTILL_KILL_AT"
_reached: Counter[str] = Counter()


def kill_point(name: str) -> None:
    """SIGKILL this process if POLYDISTILL_KILL_AT names this point and occurrence."""
    target = os.environ.get(KILL_AT_VARIABLE)
    if not target:
        return
    point, _, occurrence = target.partition("@")
    if point != name:
        return
    _reached[name] += 1
    if _reached[name] == int(occurrence or 1):
        os.kill(os.getpid(), signal.SIGKILL)
