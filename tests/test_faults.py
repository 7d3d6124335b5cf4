"""An actor killed with SIGKILL mid-stage is detected, and the run restarts from its folder."""

import os
import signal

import pytest


def test_killed_actor_is_detected_and_the_run_restarted(ray_local):
    import ray

    from llama_rlhf.orchestrator.faults import actor_fault, run_with_restarts

    @ray.remote(num_cpus=0.1)
    class Rank:
        def pid(self):
            return os.getpid()

        def step(self):
            return 1.0

    calls, notes = [], []

    def first():  # a stage whose actor is killed -9 while the orchestrator waits on it
        calls.append("run")
        a = Rank.remote()
        os.kill(ray.get(a.pid.remote()), signal.SIGKILL)
        return ray.get(a.step.remote())

    def again():  # the resume: fresh actors, the stage redone
        calls.append("resume")
        return int(ray.get(Rank.remote().step.remote()))

    assert run_with_restarts(first, again, max_restarts=2, note=notes.append) == 1
    assert calls == ["run", "resume"] and "an actor died" in notes[0] and "restart 1 of 2" in notes[0]

    with pytest.raises(ray.exceptions.RayActorError) as e:  # past the budget: the fault propagates
        run_with_restarts(first, first, max_restarts=1, note=notes.append)
    assert actor_fault(e.value) is e.value

    with pytest.raises(ZeroDivisionError):  # anything else is not retried
        run_with_restarts(lambda: 1 / 0, again, max_restarts=2)


def test_group_calls_raise_the_first_failure_without_waiting_on_blocked_ranks(ray_local):
    """One rank of a collective dies: the others block in the collective for good, so a group call must
    raise the dead rank's error as soon as it comes, not wait on the blocked ranks first."""
    import time

    import ray

    from llama_rlhf.actors.remote import get_all

    @ray.remote(num_cpus=0.1)
    def blocked():  # a surviving rank, stuck in a collective with a dead peer
        time.sleep(120)

    @ray.remote(num_cpus=0.1)
    def dead():
        raise ValueError("rank 1 lost")

    refs = [blocked.remote(), dead.remote()]
    t = time.perf_counter()
    with pytest.raises(ValueError, match="rank 1 lost"):
        get_all(refs)
    assert time.perf_counter() - t < 60
    ray.cancel(refs[0], force=True)
    assert get_all([ray.put(1), ray.put(2)]) == [1, 2]
