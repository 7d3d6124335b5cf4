"""Ray start-up and placement: where each role's ranks and each rollout engine run, from `cluster`.

Local CPU mode starts its own Ray bound to 127.0.0.1 with fractional CPUs per actor (no GPUs, nothing to
reserve). On GPUs the job reserves ONE placement group of identical one-GPU bundles (vLLM's Ray executor
takes only bundles of at most one GPU) and decides which bundle serves what once Ray has put the bundles
on nodes: each rollout engine first gets `tensor_parallel_size` bundles of one node (its TP ranks must
share NVLink), then the training roles take the rest in order.

  separate   policy, reference (or the policy's bundles, `colocate_policy_reference`), critic, the two
             reward models and the engines each on GPUs of their own; their calls overlap.
  colocated  the hybrid engine: as many bundles as policy ranks; rank i of every role and the engine
             covering bundle i share that GPU, each actor holding an equal fraction of it.

`Placement.options(role)(i)` are the Ray options of rank i of a role; `engine_options(k)` those of rollout
engine k, whose TP workers vLLM's Ray executor places in `VLLM_RAY_BUNDLE_INDICES` (set in its env).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field

import ray
from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from llama_rlhf.config import ROLE_NAMES, ClusterConfig

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
        _loopback_only(env)
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, _temp_dir=tmp,
                 _node_ip_address="127.0.0.1", log_to_driver=False, runtime_env={"env_vars": env})
        if ray.util.get_node_ip_address() != "127.0.0.1":
            raise RuntimeError(f"cluster.mode=local: Ray took node address {ray.util.get_node_ip_address()}, "
                               f"not 127.0.0.1; its servers would listen beyond loopback")
    else:
        ray.init(address=cluster.address or "auto", runtime_env={"env_vars": env}, log_to_driver=False)


def _loopback_only(env: dict) -> None:
    """Keep a local run on 127.0.0.1. Ray replaces a loopback `_node_ip_address` with the host's
    reachable address (`services.resolve_ip_for_localhost`), and then its GCS, raylet, workers and
    agents listen on every interface, unless the node is declared single-machine: the switch Ray
    reads for Windows/macOS (env for the processes it starts, the constant for this one). Our
    rendezvous and weight-sync sockets bind the node address, so they follow; vLLM takes VLLM_HOST_IP,
    gloo and NCCL the loopback device."""
    import ray._private.ray_constants as ray_constants

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    env.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", VLLM_HOST_IP="127.0.0.1", GLOO_SOCKET_IFNAME="lo",
               NCCL_SOCKET_IFNAME="lo")


def ppo_roles(cfg) -> tuple[str, ...]:
    """The roles only PPO needs: none when no version runs PPO (`iterations.rs_only_until`), else the
    reference (pi_0) and, unless the advantages are critic-free (`ppo.advantage: rloo`), the critic."""
    if cfg.iterations.num_versions <= cfg.iterations.rs_only_until:
        return ()
    return ("reference", "critic") if cfg.ppo.uses_critic else ("reference",)


def roles_in_use(cluster: ClusterConfig, ppo: tuple[str, ...]) -> list[str]:
    """The DeepSpeed roles the job starts: every role but the reference and critic, and of those the `ppo` ones."""
    return [r for r in ROLE_NAMES if r in ppo or r not in ("reference", "critic")]


def gpu_layout(cluster: ClusterConfig, ppo: tuple[str, ...]) -> tuple[int, dict[str, int]]:
    """(bundles, GPUs of their own per role) on a GPU cluster: the arithmetic `plan` and `create` share."""
    roles = roles_in_use(cluster, ppo)
    tp, engines = cluster.rollout.tensor_parallel_size, cluster.rollout.engines
    if cluster.placement == "colocated":
        return cluster.policy.ranks, {"policy": cluster.policy.ranks}
    own = {r: cluster.role(r).ranks for r in roles}
    if "reference" in own and cluster.colocate_policy_reference:
        del own["reference"]  # on the policy's bundles
    own["rollout"] = engines * tp
    return sum(own.values()), own


def tp_groups(bundle_nodes: list[str], tp: int, engines: int, name: str = "rollout") -> list[list[int]]:
    """`engines` groups of `tp` bundle indices, each group on one node (nodes in order of first bundle)."""
    by_node: dict[str, list[int]] = {}
    for b, node in enumerate(bundle_nodes):
        by_node.setdefault(node, []).append(b)
    groups = [idx[i:i + tp] for idx in by_node.values() for i in range(0, len(idx) - tp + 1, tp)]
    if len(groups) < engines:
        sizes = sorted(len(v) for v in by_node.values())
        raise RuntimeError(f"cluster.rollout: {engines} engines x {tp} GPUs need {engines} nodes' worth of {tp} "
                           f"GPUs on one node; the placement group has {name} bundles per node {sizes}")
    return groups[:engines]


@dataclass
class Placement:
    """Which bundle serves what. `index[role]` = the bundle of each rank, `engines[k]` = engine k's TP
    bundles, `share[role]` = the fraction of a GPU each actor of that role holds."""

    cluster: ClusterConfig
    pg: object | None = None
    index: dict[str, list[int]] = field(default_factory=dict)
    engines: list[list[int]] = field(default_factory=list)
    share: dict[str, float] = field(default_factory=dict)
    bundle_nodes: list[str] = field(default_factory=list)
    colocation: object = None
    """Set by `actors.remote.start_groups`: the switch the rollout group joins."""

    @classmethod
    def create(cls, cluster: ClusterConfig, ppo: tuple[str, ...], timeout_s: float = 600) -> Placement:
        if not cluster.gpu:
            return cls(cluster)  # CPU: fractional CPUs, no reservation needed
        n_bundles, _ = gpu_layout(cluster, ppo)
        per_gpu = len(cls._sharers(cluster, ppo))
        bundle = {"GPU": 1, "CPU": cluster.cpus_per_actor * per_gpu}
        pg = placement_group([dict(bundle) for _ in range(n_bundles)], strategy="PACK")
        ray.get(pg.ready(), timeout=timeout_s)
        nodes = placement_group_table(pg)["bundles_to_node_id"]
        return cls.assign(cluster, ppo, [nodes[b] for b in range(n_bundles)], pg)

    @staticmethod
    def _sharers(cluster: ClusterConfig, ppo: tuple[str, ...]) -> list[str]:
        """The actor kinds that share one GPU at most (colocated: every role and the engines)."""
        if cluster.placement == "colocated":
            return roles_in_use(cluster, ppo) + ["rollout"]
        shared = cluster.colocate_policy_reference and "reference" in ppo
        return ["policy", "reference"] if shared else ["policy"]

    @classmethod
    def assign(cls, cluster: ClusterConfig, ppo: tuple[str, ...], bundle_nodes: list[str], pg=None) -> Placement:
        """The bundle of every rank and engine, given the node of each bundle (pure: tested without Ray)."""
        tp, n_eng = cluster.rollout.tensor_parallel_size, cluster.rollout.engines
        roles = roles_in_use(cluster, ppo)
        engines = tp_groups(bundle_nodes, tp, n_eng)
        index: dict[str, list[int]] = {}
        if cluster.placement == "colocated":
            # rank i of every role on the GPU of policy rank i; engines on GPUs in node order
            order = [b for g in engines for b in g] + [b for b in range(len(bundle_nodes))
                                                       if all(b not in g for g in engines)]
            for r in roles:
                index[r] = order[: cluster.role(r).ranks]
            # Ray counts GPU fractions in 1e-4 units: round down so that the shares fit in one GPU
            share = int(1e4 / len(cls._sharers(cluster, ppo))) / 1e4
            shares = dict.fromkeys(roles + ["rollout"], share)
        else:
            taken = {b for g in engines for b in g}
            free = [b for b in range(len(bundle_nodes)) if b not in taken]
            for r in roles:
                if r == "reference" and cluster.colocate_policy_reference:
                    continue
                index[r], free = free[: cluster.role(r).ranks], free[cluster.role(r).ranks:]
            shares = dict.fromkeys(roles + ["rollout"], 1.0)
            if "reference" in roles and cluster.colocate_policy_reference:
                index["reference"] = index["policy"]
                shares["policy"] = shares["reference"] = 0.5
        return cls(cluster, pg, index, engines, shares, list(bundle_nodes))

    def options(self, role: str):
        c = self.cluster

        def opts(i: int) -> dict:
            if self.pg is None:
                return {"num_cpus": c.cpus_per_actor, "num_gpus": 0}
            return {"num_cpus": c.cpus_per_actor, "num_gpus": self.share[role],
                    "scheduling_strategy": PlacementGroupSchedulingStrategy(
                        self.pg, placement_group_bundle_index=self.index[role][i])}

        return opts

    def engine_options(self, k: int) -> dict:
        """Ray options of rollout engine k (the actor owning the `vllm.LLM`). TP 1: the actor holds its
        GPU. TP > 1: it holds none and sits on its first bundle; vLLM's Ray executor starts one worker
        per bundle of `VLLM_RAY_BUNDLE_INDICES`, each with `VLLM_RAY_PER_WORKER_GPUS`."""
        c = self.cluster
        if self.pg is None:
            return {"num_cpus": c.cpus_per_actor}
        group, share = self.engines[k], self.share["rollout"]
        opts = {"num_cpus": c.cpus_per_actor, "num_gpus": share if len(group) == 1 else 0,
                "scheduling_strategy": PlacementGroupSchedulingStrategy(
                    self.pg, placement_group_bundle_index=group[0], placement_group_capture_child_tasks=True)}
        if len(group) > 1:
            opts["runtime_env"] = {"env_vars": {"VLLM_RAY_BUNDLE_INDICES": ",".join(map(str, group)),
                                                "VLLM_RAY_PER_WORKER_GPUS": str(share)}}
        return opts

    @property
    def backend(self) -> str:
        return "nccl" if self.cluster.gpu else "gloo"

    @property
    def colocated(self) -> bool:
        return self.cluster.placement == "colocated"

    def release(self) -> None:
        if self.pg is not None:
            remove_placement_group(self.pg)
