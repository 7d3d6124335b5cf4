"""Where a run's wall time goes: exclusive seconds per activity, kept in state.json and shown by the report.

    with ctx.clock("train: reward models"):
        ...

Blocks nest; each second counts once, in the innermost open block (a sync inside a PPO iteration is
"weight sync", not "PPO"), so the activities plus the untimed rest add up to the wall time. Only the thread
that made the clock records: blocks entered from `gather`'s worker threads overlap in time with each other
and are counted in the block that issued the `gather`.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from contextlib import contextmanager

UNTIMED = "other (orchestrator, untimed)"
# activities timed at several call sites, named once
GENERATE = "generate: rollout engines"
LOAD = "load models (DeepSpeed init, checkpoint read)"
SCORE_RMS = "score: reward models"


class Clock:
    def __init__(self, totals: dict[str, float] | None = None):
        self.totals: Counter = Counter(totals or {})
        self._owner = threading.get_ident()
        self._child: list[float] = []  # per open block: seconds spent in the blocks nested inside it

    @contextmanager
    def __call__(self, activity: str):
        if threading.get_ident() != self._owner:
            yield
            return
        start = time.perf_counter()
        self._child.append(0.0)
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            self.totals[activity] += elapsed - self._child.pop()
            if self._child:
                self._child[-1] += elapsed


def breakdown(by_activity: dict[str, float], wall: float) -> list[tuple[str, float, float]]:
    """(activity, seconds, share of the wall time), largest first, with the untimed rest as its own row."""
    rows = sorted(((k, v) for k, v in by_activity.items() if v > 0), key=lambda kv: -kv[1])
    rest = wall - sum(v for _, v in rows)
    if rest > 0:
        rows.append((UNTIMED, rest))
    return [(k, v, v / wall if wall > 0 else 0.0) for k, v in rows]
