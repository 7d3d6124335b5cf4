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
