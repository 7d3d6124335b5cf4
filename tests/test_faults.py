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


def test_a_killed_rank_leaves_no_deepspeed_shared_memory_behind(tmp_path):
    """DeepSpeed's CPU comm layer makes a 64 MiB /dev/shm segment per process and never unlinks it; a rank
    killed with SIGKILL (a fault, a restart, every test's actor teardown) used to leave it in tmpfs, and a
    CI run filled its node with ~190 of them. Real DeepSpeed in a real process: the segment is made (the shm
    op is built and initialized) and is already unlinked when the rank is killed."""
    import socket
    import subprocess
    import sys

    from llama_rlhf.actors.rendezvous import DistSpec, shm_segment

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = (
        "import os, signal, sys\n"
        "from llama_rlhf.actors.rendezvous import DistSpec, init_process_group, shm_segment\n"
        "import deepspeed.comm.comm as c\n"
        f"d = DistSpec(master_port={port})\n"
        "init_process_group(d)\n"
        "print('shm_op', c.cdb.shm_comm_op is not None, 'exists', shm_segment(d).exists(), flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR",
                                                                os.path.join(sys.prefix, "torch_extensions"))}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == -signal.SIGKILL, out.stderr[-2000:]
    assert "shm_op True exists False" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]
    assert not shm_segment(DistSpec(master_port=port)).exists()


def test_a_peer_error_is_traced_to_the_lost_actor(ray_local):
    """When a receiver dies mid-collective its sender fails with a plain connection error; `lost_actor`
    finds the dead actor's RayActorError among the receivers' refs (what `push_weights` raises instead)."""
    import time

    import ray

    from llama_rlhf.actors.remote import lost_actor
    from llama_rlhf.orchestrator.faults import actor_fault

    @ray.remote(num_cpus=0.1)
    class Receiver:
        def pid(self):
            return os.getpid()

        def receive(self, seconds):
            time.sleep(seconds)
            return seconds

    alive, doomed = Receiver.remote(), Receiver.remote()
    pid = ray.get(doomed.pid.remote())
    refs = [alive.receive.remote(0.1), doomed.receive.remote(60)]
    os.kill(pid, signal.SIGKILL)
    err = lost_actor(refs, timeout_s=30)
    assert isinstance(err, ray.exceptions.RayActorError) and actor_fault(err) is err
    assert lost_actor([alive.receive.remote(0.1)], timeout_s=30) is None  # nobody lost: the sender's error stands
