"""Placement on a simulated multi-node GPU cluster: Ray's own multi-node harness (`ray.cluster_utils.Cluster`),
nodes declaring logical GPUs, the real placement code (`orchestrator.cluster.Placement`: one placement group,
the bundle assignment, the Ray options of every rank and engine) and the real group construction
(`actors.remote.RankGroup`). The actors are real Ray actors that report their node and `ray.get_gpu_ids()`
instead of loading weights; a tensor-parallel engine starts its TP workers the way vLLM's Ray executor does
(`VLLM_RAY_BUNDLE_INDICES` / `VLLM_RAY_PER_WORKER_GPUS` from its environment, the current placement group).

The 7B (separate) and 70B (colocated, TP 4) presets are scaled down to what this 2-core machine can host as
processes: ranks and engines divided, node count and TP kept where the check needs them. Each preset runs
in its own subprocess (its own Ray), so the session's local Ray is untouched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.ray]

SCALED = {
    # 7B separate: 2 nodes x 4 GPUs; policy 2 + reference on the policy's GPUs, critic 2, RMs 1 + 1, 2 engines
    "7b": ["cluster.num_nodes=2", "cluster.gpus_per_node=4", "cluster.policy.ranks=2", "cluster.reference.ranks=2",
           "cluster.critic.ranks=2", "cluster.rm_helpful.ranks=1", "cluster.rm_safety.ranks=1",
           "cluster.rollout.engines=2", "cluster.cpus_per_actor=0.1"],
    # 70B colocated: 2 nodes x 4 GPUs; the policy's 8 GPUs shared by the critic (4 ranks), the reference and
    # the RMs (2 each) and 2 engines x TP 4 (TP kept: the node grouping is what is checked)
    "70b": ["cluster.num_nodes=2", "cluster.gpus_per_node=4", "cluster.policy.ranks=8", "cluster.critic.ranks=4",
            "cluster.reference.ranks=2", "cluster.rm_helpful.ranks=2", "cluster.rm_safety.ranks=2",
            "cluster.rollout.engines=2", "cluster.cpus_per_actor=0.1"],
}


class Probe:
    """Stands where a rank of a role would: the constructor a role takes, and where it landed."""

    def __init__(self, dist=None, zero=None, colocation=None):
        self.rank = getattr(dist, "rank", 0)

    def where(self) -> dict:
        import ray

        return {"node": ray.get_runtime_context().get_node_id(), "gpus": [str(g) for g in ray.get_gpu_ids()],
                "rank": self.rank}


class EngineProbe(Probe):
    """Stands where a rollout engine would; for TP > 1 it starts its TP workers as vLLM's Ray executor does:
    one actor per bundle of VLLM_RAY_BUNDLE_INDICES, VLLM_RAY_PER_WORKER_GPUS GPUs each, in the current
    placement group (captured from this actor's scheduling strategy)."""

    def workers(self) -> list[dict]:
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        indices = os.environ.get("VLLM_RAY_BUNDLE_INDICES", "")
        if not indices:
            return []
        pg = ray.util.get_current_placement_group()
        per_worker = float(os.environ["VLLM_RAY_PER_WORKER_GPUS"])
        worker = ray.remote(Probe)
        actors = [worker.options(num_cpus=0, num_gpus=per_worker, scheduling_strategy=PlacementGroupSchedulingStrategy(
            placement_group=pg, placement_group_capture_child_tasks=True, placement_group_bundle_index=b)).remote()
            for b in map(int, indices.split(","))]
        return [{**ray.get(a.where.remote()), "bundle": b} for a, b in zip(actors, map(int, indices.split(",")))]


def simulate(preset: str) -> dict:
    """Start the simulated cluster, place every role and engine of the scaled preset, report where each landed."""
    import ray
    from ray.cluster_utils import Cluster
    from ray.util.placement_group import placement_group_table

    from llama_rlhf.actors.remote import RankGroup
    from llama_rlhf.config import load_config
    from llama_rlhf.orchestrator.cluster import Placement, roles_in_use

    cfg = load_config(ROOT / "configs" / f"llama2-{preset}.yaml", SCALED[preset])
    c = cfg.cluster
    sim = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0})
    for _ in range(c.num_nodes):
        sim.add_node(num_cpus=4, num_gpus=c.gpus_per_node, object_store_memory=80 * 2**20)
    ray.init(address=sim.address, log_to_driver=False)
    try:
        placement = Placement.create(c, ppo=("reference", "critic"), timeout_s=120)
        table = placement_group_table(placement.pg)
        out = {"bundle_nodes": [table["bundles_to_node_id"][b] for b in range(len(placement.bundle_nodes))],
               "index": placement.index, "engines": placement.engines, "share": placement.share, "roles": {},
               "placement": c.placement, "tp": c.rollout.tensor_parallel_size}
        probe = ray.remote(Probe)
        for role in roles_in_use(c, ppo=("reference", "critic")):
            group = RankGroup(probe, role, c.role(role).ranks, placement.options(role), placement.backend)
            out["roles"][role] = ray.get([r.where.remote() for r in group.ranks])
        engine = ray.remote(EngineProbe)
        out["engine_actors"], out["tp_workers"] = [], []
        for k in range(c.rollout.engines):
            e = engine.options(**placement.engine_options(k)).remote()
            out["engine_actors"].append(ray.get(e.where.remote()))
            out["tp_workers"].append(ray.get(e.workers.remote()))
        return out
    finally:
        ray.shutdown()
        sim.shutdown()


@pytest.fixture(scope="module", params=["7b", "70b"])
def placed(request):
    # raylets of a loaded 2-core machine register slowly (Ray's default 10 s wait failed here once), and the
    # probes (~0.25 GB each) must not be killed by Ray's memory monitor for what other jobs on the machine use
    env = dict(os.environ, RAY_AUTH_MODE="disabled", PYTHONPATH=str(ROOT), RAY_raylet_start_wait_time_s="300",
               RAY_memory_usage_threshold="0.99", RAY_TMPDIR=tempfile.mkdtemp(prefix="rsim_", dir="/tmp"))
    run = subprocess.run([sys.executable, __file__, request.param], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return request.param, json.loads(run.stdout.strip().splitlines()[-1])


def _gpu_users(out: dict) -> dict[tuple[str, str], list[tuple[str, float]]]:
    """(node, GPU id) -> [(who, GPU fraction)] over every actor that holds a GPU."""
    users: dict[tuple[str, str], list[tuple[str, float]]] = {}
    for role, ranks in out["roles"].items():
        for r in ranks:
            for g in r["gpus"]:
                users.setdefault((r["node"], g), []).append((f"{role}/{r['rank']}", out["share"][role]))
    holders = [w for ws in out["tp_workers"] for w in ws] + [e for e in out["engine_actors"] if e["gpus"]]
    for w in holders:
        for g in w["gpus"]:
            users.setdefault((w["node"], g), []).append(("rollout", out["share"]["rollout"]))
    return users


def test_every_actor_lands_in_its_bundle(placed):
    preset, out = placed
    nodes = out["bundle_nodes"]
    for role, ranks in out["roles"].items():
        for i, r in enumerate(ranks):
            assert r["node"] == nodes[out["index"][role][i]], (role, i)
            assert len(r["gpus"]) == 1  # one GPU per rank (a fraction of it when shared)
    for k, e in enumerate(out["engine_actors"]):
        assert e["node"] == nodes[out["engines"][k][0]]
    for k, ws in enumerate(out["tp_workers"]):
        for w in ws:
            assert w["node"] == nodes[w["bundle"]] and w["bundle"] in out["engines"][k]


def test_tensor_parallel_ranks_share_a_node(placed):
    preset, out = placed
    for k, group in enumerate(out["engines"]):
        assert len(group) == out["tp"]
        assert len({out["bundle_nodes"][b] for b in group}) == 1, (k, group)
    for ws in out["tp_workers"]:
        assert len({w["node"] for w in ws}) <= 1 and len({(w["node"], w["gpus"][0]) for w in ws}) == len(ws)
    if preset == "70b":
        assert all(len(ws) == 4 for ws in out["tp_workers"])  # TP 4: four workers, four distinct GPUs


def test_no_gpu_is_oversubscribed(placed):
    _, out = placed
    users = _gpu_users(out)
    for gpu, who in users.items():
        assert sum(f for _, f in who) <= 1.0 + 1e-9, (gpu, who)


def test_sharing_is_exactly_as_configured(placed):
    preset, out = placed
    users = _gpu_users(out)
    if out["placement"] == "separate":
        # 7B: the reference shares the policy's GPUs (half each); everything else alone on its GPU
        for who in users.values():
            roles = sorted(w.split("/")[0] for w, _ in who)
            assert roles in (["policy", "reference"], ["critic"], ["rm_helpful"], ["rm_safety"], ["rollout"]), roles
            if roles == ["policy", "reference"]:
                assert [w.split("/")[1] for w, _ in who][0] == [w.split("/")[1] for w, _ in who][1]  # rank i with i
        assert len(users) == len(out["bundle_nodes"])  # every reserved GPU used
    else:
        # 70B colocated: GPU i holds rank i of every role that has an i-th rank, and one TP worker
        by_rank = {}
        for ranks in out["roles"].values():
            for r in ranks:
                by_rank.setdefault(r["rank"], set()).add((r["node"], r["gpus"][0]))
        assert all(len(gpus) == 1 for gpus in by_rank.values())  # every role's rank i on the same GPU
        assert len(users) == 8 and all(sum(w == "rollout" for w, _ in who) == 1 for who in users.values())
        counts = sorted(len(who) for who in users.values())  # GPU i: the roles with an i-th rank + one TP worker
        assert counts == [2] * 4 + [3] * 2 + [6] * 2, counts


if __name__ == "__main__":
    print(json.dumps(simulate(sys.argv[1])))
