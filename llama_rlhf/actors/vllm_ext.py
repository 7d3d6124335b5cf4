"""vLLM worker extension: the receiving end of the weight sync, inside each vLLM worker process.

vLLM mixes this class into its worker (`CPUWorker` on CPU, `Worker` on GPU) when an engine is built with
`LLM(..., worker_extension_cls="llama_rlhf.actors.vllm_ext.WeightSyncExtension")`; the methods are called
with `llm.collective_rpc("name", args=...)`, on every worker of the engine (one per TP rank). Arguments
and results cross a msgpack boundary: tensors do not survive it, so only plain lists/str/int/dicts go in
or out, and the weights themselves travel through the sync group (see `weight_sync`).

Method names must not collide with the worker's own (`update_weights` exists on `CPUWorker` and aborts
engine start-up).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import asdict

from llama_rlhf.actors.weight_sync import SyncMeta, SyncStats, close_group, init_group, raw_broadcast, receive


class WeightSyncExtension:
    # provided by the vLLM worker this class is mixed into
    rank: int
    device: object

    def init_weight_sync(
        self, host: str, port: int, rank_offset: int, world_size: int, backend: str, timeout_s: float
    ) -> int:
        """Join the sync group as rank `rank_offset + worker rank`; blocks until every rank has joined.
        A group made before (the sender was re-made) is torn down first instead of leaking its sockets."""
        self.close_weight_sync()
        rank = rank_offset + self.rank
        self._weight_sync_pg = init_group(host, port, rank, world_size, backend, timeout_s)
        return rank

    def receive_weights(self, wire_meta: list) -> dict:
        """Receive one sync and load it in place; returns `SyncStats` as a dict (receive + load time)."""
        meta = SyncMeta.from_wire(wire_meta)
        t0 = time.perf_counter()
        weights = receive(self._weight_sync_pg, meta, self.device)
        # reload_weights (not model.load_weights): the CPU backend post-processes linear weights and the
        # live parameters no longer carry `weight_loader`; reload restores them, loads HF names, re-processes.
        self.reload_weights(weights_iterator=weights, is_checkpoint_format=True)
        self._refresh_tied_head()
        plan = meta.plan()
        return asdict(SyncStats(bytes=sum(b.nbytes for b in plan), seconds=time.perf_counter() - t0, buckets=len(plan)))

    def load_folder(self, path: str) -> float:
        """Load an HF folder's weights (same architecture) in place, the reload a sync runs, read from the
        folder's safetensors; returns seconds."""
        t0 = time.perf_counter()
        self.reload_weights(weights_path=path, is_checkpoint_format=True)
        self._refresh_tied_head()
        return time.perf_counter() - t0

    def _refresh_tied_head(self) -> None:
        """A tied LM head (SmolLM2's) is the embedding's parameter, but the CPU backend computes it from a
        oneDNN handle built from that weight when the head is processed, and the reload processes only the
        layers it loaded weights into: the embedding, not the head (the checkpoint has no `lm_head.weight`).
        Measured on SmolLM2 after one SFT step: greedy tokens right, log-probs 4e-2 off the policy's. So the
        head is re-processed here (on GPU unquantized processing is a no-op and the head reads the weight)."""
        model = self.model_runner.get_model()
        head = getattr(model, "lm_head", None)
        if getattr(model.config, "tie_word_embeddings", False) and hasattr(head, "quant_method"):
            head.quant_method.process_weights_after_loading(head)

    def receive_probe(self, nbytes: int) -> float:
        """The receiving end of `raw_broadcast` (the sender's `broadcast_probe`): seconds on the wire."""
        return raw_broadcast(self._weight_sync_pg, nbytes, self.device)

    def close_weight_sync(self) -> None:
        pg = getattr(self, "_weight_sync_pg", None)
        if pg is not None:
            close_group(pg)
            self._weight_sync_pg = None

    def watch_frontend(self, pid: int, create_time: float, interval_s: float = 1.0) -> None:
        """Take this engine down once the process that owns the `LLM` (the Ray actor) is gone.

        vLLM's workers die with their engine core, but the engine core outlives a frontend killed with
        SIGKILL unless something reaps it: Ray's raylet does, except when the raylet itself died (`ray stop`,
        a crashed node agent); then each orphaned engine keeps its memory (on GPU: its whole KV cache).
        """
        import psutil

        if pid == os.getpid():  # VLLM_ENABLE_V1_MULTIPROCESSING=0: the engine lives in the frontend
            return
        parent = os.getppid()
        # multiproc executor: this worker is a child of the engine core, which must be killed too;
        # uniproc (GPU, TP=1): this worker *is* the engine core, a child of the frontend itself
        engine_core = parent if parent != pid else None

        def frontend_alive() -> bool:
            try:
                p = psutil.Process(pid)
                return p.create_time() == create_time and p.status() != psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return False

        def watch() -> None:
            while frontend_alive():
                time.sleep(interval_s)
            if engine_core is not None and os.getppid() == engine_core:
                os.kill(engine_core, signal.SIGKILL)
            os._exit(1)

        threading.Thread(target=watch, name="llama-rlhf-frontend-watch", daemon=True).start()
