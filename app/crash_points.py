"""Named moments at which the worker can be made to die at once, as ``kill -9`` would kill it.

A crash from outside lands wherever the process happens to be; the reliability suite also needs
the moments that matter most, every time: just after a version's transaction committed (before
the version is announced, hashed or its queue entry acknowledged), inside an open commit, half-way
through a take-over's recovery, around a consolidation. ``SMEDIT_CRASH_AT=<point>`` (or
``<point>:<n>``, the n-th time it is reached) makes the process send itself ``SIGKILL`` there:
no ``finally`` block, no ``atexit``, no flushed buffer runs, exactly as with an external
``kill -9``. Unset (the default and the only production setting) each point is one comparison.

The same idea as FreeBSD's fail points or etcd's gofail, kept to one action: die.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

log = logging.getLogger("app.crash_points")

POINTS: dict[str, str] = {
    "edit_commit_open": "an edit batch's version, delta and outcomes written, its transaction not yet committed",
    "after_edit_commit": "an edit batch's version committed; not yet live, announced, hashed or acknowledged",
    "after_revert_commit": "a revert's (or restore's) version committed; not yet live, announced or hashed",
    "consolidation_open": "a consolidation's version written, its transaction not yet committed",
    "after_consolidation_commit": "a consolidation's version committed; not yet live, announced or hashed",
    "before_ack": "a micro-batch fully handled and committed; its queue entries not yet acknowledged",
    "during_recovery": "a new writer reset the dead writer's running jobs; nothing re-enqueued yet",
}


def parse(spec: str) -> tuple[str, int] | None:
    """``"point"`` or ``"point:n"`` -> (point, n); ``""`` -> None. Unknown points are an error, so
    a typo in a fault test fails at start-up instead of silently never crashing."""
    spec = spec.strip()
    if not spec:
        return None
    name, _, count = spec.partition(":")
    if name not in POINTS:
        raise ValueError(f"unknown crash point {name!r}; known: {', '.join(POINTS)}")
    try:
        n = int(count) if count else 1
    except ValueError:
        raise ValueError(f"crash point count must be a whole number, got {count!r}") from None
    if n < 1:
        raise ValueError(f"crash point count must be at least 1, got {n}")
    return name, n


class CrashPoints:
    """The one armed point of this process (or none) and how often it has been reached."""

    def __init__(self, spec: str = "") -> None:
        self.armed = parse(spec)
        self.hits = 0

    def reach(self, name: str) -> None:
        if self.armed is None or name != self.armed[0]:
            return
        self.hits += 1
        if self.hits < self.armed[1]:
            return
        log.warning("crash point reached: killing this process", extra={"point": name, "hit": self.hits})
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)
