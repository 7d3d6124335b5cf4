"""On CPU nodes the roles that the orchestrator runs at once share the cores: each rank computes with
cores // (group calls running together x the group's ranks) threads, and with all of them when its role
runs alone (more compute threads than cores made the PPO scoring of five roles 25% slower on 2 cores).
Real Ray actors built on the real `Role`, driven by the real `RankGroup` and `gather`."""

import os

import pytest
import torch

from llama_rlhf.actors.engine import Role, cpu_threads


def test_cpu_threads_split_the_cores():
    assert [cpu_threads(16, k) for k in (1, 2, 5, 16, 40)] == [16, 8, 3, 1, 1]
    assert cpu_threads(2, 0) == 2


def test_gathered_roles_split_the_cores_and_a_lone_role_takes_them_back(ray_local):
    import ray

    from llama_rlhf.actors.remote import RankGroup, gather

    if torch.cuda.is_available():
        pytest.skip("GPU ranks keep torch's threads")

    class Probe(Role):  # defined here: Ray ships it by value (test modules are not importable on workers)
        def threads(self) -> int:
            return torch.get_num_threads()

    actor = ray.remote(Probe)
    one = RankGroup(actor, "one", 1, lambda i: {"num_cpus": 0.1}, "gloo")
    two = RankGroup(actor, "two", 2, lambda i: {"num_cpus": 0.1}, "gloo")
    threads = lambda g: g._each(lambda r, _: r.threads.remote())  # noqa: E731
    cores = os.cpu_count()
    try:
        assert threads(one) == [cores]  # alone, one rank: every core
        assert threads(two) == [cpu_threads(cores, 2)] * 2  # alone, two ranks
        a, b = gather(lambda: threads(one), lambda: threads(two))
        assert a == [cpu_threads(cores, 2)] and b == [cpu_threads(cores, 4)] * 2
        assert threads(one) == [cores]  # alone again
    finally:
        one.kill()
        two.kill()


def test_a_gather_inside_a_gathered_call_splits_the_cores_finer(ray_local):
    """PPO's scoring gathers four calls, one of which gathers the two RMs: on a 16-core node the three
    single roles get 16 // 4 = 4 threads each and the RMs 16 // 8 = 2, 16 threads in all (the RMs took
    16 // 2 = 8 each before: 28 threads on 16 cores)."""
    import ray

    from llama_rlhf.actors.remote import RankGroup, gather

    if torch.cuda.is_available():
        pytest.skip("GPU ranks keep torch's threads")

    class Probe(Role):
        def threads(self) -> int:
            return torch.get_num_threads()

    actor = ray.remote(Probe)
    opts = lambda i: {"num_cpus": 0.1, "runtime_env": {"env_vars": {"LLAMA_RLHF_THREADS": "16"}}}  # noqa: E731
    groups = [RankGroup(actor, name, 1, opts, "gloo") for name in ("policy", "reference", "critic", "rm_h", "rm_s")]
    policy, reference, critic, rm_h, rm_s = groups
    threads = lambda g: g._each(lambda r, _: r.threads.remote())[0]  # noqa: E731
    try:
        assert threads(policy) == 16
        rms, p, ref, c = gather(lambda: gather(lambda: threads(rm_h), lambda: threads(rm_s)),
                                lambda: threads(policy), lambda: threads(reference), lambda: threads(critic))
        assert (p, ref, c) == (4, 4, 4) and rms == [2, 2]
        assert threads(rm_h) == 16  # alone again
    finally:
        for g in groups:
            g.kill()
