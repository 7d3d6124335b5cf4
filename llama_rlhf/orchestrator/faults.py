"""Actor faults: a rank, the reference, the critic, a reward model or a rollout worker killed mid-stage
(kill -9, OOM killer, a lost node) surfaces in the orchestrator as Ray's `RayActorError`. The run is
then restarted whole from its folder: every actor group is recreated and loads the latest committed
checkpoint, and the interrupted stage is redone. Stages seed their randomness from (run.seed, stage)
only, so the redone stage is the stage an uninterrupted run would have run (`resume`'s guarantee).

Rollout engines that die or hang inside one generation are already replaced and their share retried
by `RolloutGroup` (`cluster.rollout.max_retries`); this is the layer above it.
"""

from __future__ import annotations

from collections.abc import Callable


def actor_fault(e: BaseException) -> BaseException | None:
    """The RayActorError behind `e` (raised directly or as the cause of a task error), else None."""
    from ray.exceptions import RayActorError

    seen = 0
    while e is not None and seen < 8:
        if isinstance(e, RayActorError):
            return e
        e = getattr(e, "cause", None) or e.__cause__ or e.__context__
        seen += 1
    return None


def run_with_restarts(first: Callable[[], int], again: Callable[[], int], max_restarts: int,
                      note: Callable[[str], None] = print) -> int:
    """`first()`; after an actor fault, `again()` (a resume of the same run folder), at most
    `max_restarts` times. Any other exception, or a fault past the budget, propagates unchanged."""
    attempt, call = 0, first
    while True:
        try:
            return call()
        except Exception as e:
            fault = actor_fault(e)
            if fault is None or attempt >= max_restarts:
                raise
            attempt += 1
            what = str(fault).strip().splitlines()[0][:200] if str(fault).strip() else type(fault).__name__
            note(f"llama-rlhf: an actor died ({what}); restarting every actor group from the last checkpoint "
                 f"(restart {attempt} of {max_restarts})")
            call = again
