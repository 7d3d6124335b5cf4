"""The rollout engines' shared-memory names in /dev/shm: found once an engine is up, removed after a kill.

vLLM's engine core and its workers talk through `MessageQueue`s over POSIX shared memory
(`multiprocessing.shared_memory`, names "psm_*"; on CPU about 400 MiB per engine, and vLLM refuses to start
without that much free in /dev/shm). A clean shutdown unlinks them; an engine killed (a lost worker that
`RolloutGroup` replaces, a crashed node agent) leaves them behind, and a long run that loses engines
fills /dev/shm until no engine starts. So each engine reports the names its processes map
(`mapped_shared_memory`), and after a kill the group removes them on the engine's node (`release`). The
names are also written to the run folder's actors.json, so that a run killed as a whole has its leftovers
removed when it is resumed (`stale_names`; local mode, where every engine ran on this host).
Unlinking a name does not touch a live mapping: the memory goes when the last process unmaps it.
"""

from __future__ import annotations

import logging
import os

import ray

log = logging.getLogger(__name__)

PREFIX = "psm_"  # multiprocessing.shared_memory's names: Ray's object store and torch use other prefixes


def mapped_shared_memory(pids: list[int]) -> list[str]:
    """Names of the shared-memory segments that the processes `pids` map and that still exist (Linux
    /proc; elsewhere nothing)."""
    names = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/maps") as f:
                for line in f:
                    path = line.rstrip("\n").split(maxsplit=5)[-1]
                    if path.startswith(f"/dev/shm/{PREFIX}") and not path.endswith("(deleted)"):
                        names.add(path[len("/dev/shm/") :])
        except OSError:  # the process is gone, or this is not Linux
            continue
    return sorted(names)


def is_segment_name(name: str) -> bool:
    """A multiprocessing.shared_memory name in /dev/shm (nothing else is ever unlinked here)."""
    return name.startswith(PREFIX) and "/" not in name


def unlink(names: list[str]) -> int:
    """Remove these names from /dev/shm; returns how many existed."""
    removed = 0
    for name in names:
        if not is_segment_name(name):
            raise ValueError(f"not a shared-memory segment name: {name!r}")
        try:
            os.unlink(f"/dev/shm/{name}")
            removed += 1
        except FileNotFoundError:
            pass
    return removed


def stale_names(actors_json: dict) -> list[str]:
    """The rollout engines' shared-memory names recorded in a run folder's actors.json (see
    `RolloutGroup.processes`) that still exist in this host's /dev/shm: what a run killed as a whole (SIGKILL,
    a lost node agent) left behind. A resumed run removes them before it starts its own engines; a name whose
    engine still lives keeps its mapping (unlinking never touches a live mapping)."""
    names = [n for w in actors_json.get("rollout", []) for n in w.get("shm", [])]
    return [n for n in names if is_segment_name(n) and os.path.exists(f"/dev/shm/{n}")]


@ray.remote(num_cpus=0, max_retries=0)
def _unlink_task(names: list[str]) -> int:
    return unlink(names)


def release(node_id: str | None, names: list[str], timeout_s: float = 60.0) -> int:
    """Remove a dead engine's names on its node (a zero-CPU task pinned there). Best effort: a node that
    is gone took its /dev/shm with it, so a failure is logged, never raised."""
    if not names or node_id is None:
        return 0
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    try:
        task = _unlink_task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False))
        return ray.get(task.remote(names), timeout=timeout_s)
    except Exception as e:  # noqa: BLE001 - cleanup must not mask the fault being handled
        log.warning("could not remove %d shared-memory names on node %s: %s", len(names), node_id, e)
        return 0
