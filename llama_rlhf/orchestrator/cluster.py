"""Ray start-up and placement: where each role's ranks run, from the config's `cluster` section.

Local mode starts its own Ray bound to 127.0.0.1 with fractional CPUs per actor (the roles take turns,
so they can share cores). Cluster mode joins a running Ray (`ray job submit` or `cluster.address`) and
reserves one placement group: a bundle per rank with `gpus_per_actor` GPUs; with
`colocate_policy_reference` the reference policy shares the policy's bundles (half a GPU each).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from llama_rlhf.config import ClusterConfig

ENV = {"TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}


def start_ray(cluster: ClusterConfig) -> None:
    if ray.is_initialized():
        return
    env = dict(ENV)
    for k in ("TORCH_EXTENSIONS_DIR", "LLAMA_RLHF_THREADS", "VLLM_CPU_KVCACHE_SPACE"):
        if k in os.environ:
            env[k] = os.environ[k]
    if cluster.mode == "local":
        # A private single-node Ray on loopback: token auth adds nothing there, and the driver and the
        # workers must agree on it (workers inherit the raylet's environment).
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        tmp = os.environ.get("RAY_TMPDIR") or tempfile.mkdtemp(prefix="ray_", dir="/tmp")
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, _temp_dir=tmp,
                 _node_ip_address="127.0.0.1", log_to_driver=False, runtime_env={"env_vars": env})
    else:
        ray.init(address=cluster.address or "auto", runtime_env={"env_vars": env}, log_to_driver=False)


@dataclass
class Placement:
    """Resources per role; `options(role)(i)` gives the Ray options of rank i of that role."""

    cluster: ClusterConfig
    pg: object | None = None
    index: dict | None = None

    @classmethod
    def create(cls, cluster: ClusterConfig, with_critic: bool) -> Placement:
        if cluster.gpus_per_actor == 0:
            return cls(cluster)  # CPU: fractional CPUs, no reservation needed
        g, c = cluster.gpus_per_actor, cluster.cpus_per_actor
        roles = [("policy", cluster.num_policy_ranks), ("rm_helpful", 1), ("rm_safety", 1),
                 ("rollout", cluster.num_rollout_workers)]
        if not cluster.colocate_policy_reference:
            roles.append(("reference", cluster.num_policy_ranks))
        if with_critic:
            roles.append(("critic", cluster.num_critic_ranks))
        bundles, index = [], {}
        for role, n in roles:
            index[role] = list(range(len(bundles), len(bundles) + n))
            bundles += [{"GPU": g, "CPU": c}] * n
        if cluster.colocate_policy_reference:
            index["reference"] = index["policy"]
        pg = placement_group(bundles, strategy="PACK")
        ray.get(pg.ready(), timeout=600)
        return cls(cluster, pg, index)

    def options(self, role: str):
        c = self.cluster
        shared = c.colocate_policy_reference and role in ("policy", "reference")

        def opts(i: int) -> dict:
            if self.pg is None:
                return {"num_cpus": c.cpus_per_actor, "num_gpus": 0}
            gpus = c.gpus_per_actor / 2 if shared else c.gpus_per_actor
            return {"num_cpus": c.cpus_per_actor / (2 if shared else 1), "num_gpus": gpus,
                    "scheduling_strategy": PlacementGroupSchedulingStrategy(
                        self.pg, placement_group_bundle_index=self.index[role][i])}

        return opts

    @property
    def backend(self) -> str:
        return "nccl" if self.cluster.gpus_per_actor > 0 else "gloo"

    def release(self) -> None:
        if self.pg is not None:
            remove_placement_group(self.pg)
