"""`llama-rlhf plan CONFIG`: does the job fit the cluster it declares? The check before any GPU is rented.

    llama-rlhf plan configs/llama2-70b.yaml [dotted.key=value ...]

For every role: its GPUs and nodes (the placement code's own assignment on a cluster of
`cluster.num_nodes` x `cluster.gpus_per_node` GPUs, bundles filled node by node), and its memory per GPU:
weights, gradients and optimizer states (ZeRO-3 shards, or host RAM where offloaded), the gathered layer,
activations at the configured micro-batch and sequence length with and without gradient checkpointing,
and for the rollout engines vLLM's weights and KV cache. Exits 1 naming the role, the phase and the
shortfall when something does not fit `cluster.gpu_memory_gib` (or the GPU count, or host RAM).

Model states follow DeepSpeed's own ZeRO-3 estimator (`estimate_zero3_model_states_mem_needs`): a
trained rank holds 18 bytes per parameter of its shard with 16-bit weights (2 weights + 4 gradients + 12
fp32 master weights and Adam moments) plus 4 bytes per parameter of the largest layer (gathered for its
forward and backward); the test checks both agree. Activations are what the forward saves for backward,
counted tensor by tensor for the HF Llama decoder layer (`layer_activation_bytes`); the test checks the
count against the bytes measured on the CPU tiny model, and `benchmarks/gpu.sh` measures them at real
widths on a GPU (`--calibration` takes its JSON).

Phases (colocated placement: what shares one GPU at the same time; separate: each role's own peak):
  sft         policy training (supervised and rejection-sampling fine-tuning)
  rm          reward-model training: both reward models hold training states, the policy keeps its own
  ppo         policy and critic training at once, reference and reward models serving
  rollout     vLLM generating: trainable states offloaded to host RAM, frozen weights stay
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the memory model itself needs no pydantic: benchmarks/gpu_scale.py imports it on a bare GPU box
    from llama_rlhf.config import Config

GIB = 2**30
CUDA_OVERHEAD_GIB = 2.0
"""Per GPU: CUDA context, NCCL buffers, allocator fragmentation (not modelled byte by byte)."""
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class Shape:
    """The dimensions the memory model reads (from the preset, or the checkpoint's config.json)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def params(self, lm_head: bool = True) -> int:
        h, kv = self.hidden, self.kv_dim
        per_layer = 2 * h * h + 2 * h * kv + 3 * h * self.intermediate + 2 * h
        return self.vocab * h + self.layers * per_layer + h + (self.vocab * h if lm_head else h)

    def largest_layer(self) -> int:
        """Parameters of the largest single module (DeepSpeed's `model_to_params` count): the embedding /
        LM head, or one MLP projection."""
        return max(self.vocab * self.hidden, self.hidden * self.intermediate)


def model_shape(cfg: Config) -> Shape:
    from llama_rlhf.models import PRESETS

    p = PRESETS[cfg.model.preset]
    ckpt = Path(cfg.model.init_checkpoint or "") / "config.json"
    if cfg.model.init_checkpoint and ckpt.is_file():  # a real checkpoint's own shape wins
        c = json.loads(ckpt.read_text())
        return Shape(c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"],
                     c.get("num_key_value_heads", c["num_attention_heads"]), c["intermediate_size"], c["vocab_size"])
    vocab = cfg.tokenizer.vocab_size if cfg.model.preset == "tiny" else p.vocab_size
    return Shape(p.hidden_size, p.num_hidden_layers, p.num_attention_heads, p.num_key_value_heads,
                 p.intermediate_size, vocab)


# --------------------------------------------------------------------------- per-rank memory (bytes)


def zero3_states(params: int, largest: int, ranks: int, trained: bool, dtype_bytes: int,
                 offload_optimizer: bool, offload_params: bool) -> dict[str, float]:
    """One rank's model states, on the GPU and in host RAM (per rank). Trained, 16-bit: DeepSpeed's
    estimator exactly (GPU 4 * largest + 18 * P / N, the 18 split 2 weights + 4 gradients + 12 optimizer;
    optimizer offload moves the 16 bytes of gradients and optimizer to the host, parameter offload the
    weights too). fp32 weights: 4 + 4 + 8 (the weights are the master copy). Frozen: the weight shard
    and one gathered layer."""
    shard = params / ranks
    w, g, o = (dtype_bytes, 4, 12) if dtype_bytes == 2 else (4, 4, 8)
    if not trained:
        g = o = 0
    gathered = (2 if not trained else 4) * largest * (dtype_bytes / 2)
    gpu = {"weights": w * shard, "gradients": g * shard, "optimizer": o * shard, "gathered layer": gathered}
    host = {}
    if offload_optimizer and trained:
        host["gradients"], host["optimizer"] = gpu.pop("gradients"), gpu.pop("optimizer")
    if offload_params:
        host["weights"] = gpu.pop("weights")
    return {"gpu": gpu, "host": host}


def layer_activation_bytes(s: Shape, dtype_bytes: int, gqa_native: bool) -> float:
    """Bytes one HF Llama decoder layer saves for backward per token (no checkpointing), tensor by tensor
    as autograd saves them (tests/test_plan.py counts them on the CPU model and gets this exactly):

      each RMSNorm   its fp32 input copy (4h), the normalised value cast back (bh), its output, which the
                     next projections keep (bh), and 1/rms (4): (4 + 2b)h + 4; in fp32 the casts are the
                     same tensors and this is 12h + 4
      attention      q and k after RoPE, v, the output (shared with o_proj's input) and the fp32
                     log-sum-exp per head: b(2h + 2kv) + 4 heads; SDPA without native GQA keeps k and v
                     repeated to every query head (kv -> h); our Triton kernel keeps them as they are
      SwiGLU MLP     gate, up, silu(gate) and their product: 4 b intermediate
    """
    b, h = dtype_bytes, s.hidden
    kv = s.kv_dim if gqa_native else h
    return 2 * ((4 + 2 * b) * h + 4) + b * (2 * h + 2 * kv) + 4 * s.heads + 4 * b * s.intermediate


def activations(s: Shape, rows: int, seq: int, dtype_bytes: int, checkpointing: bool, gqa_native: bool,
                chunk_tokens: int, lm_head: bool, trained: bool) -> float:
    """Peak activation bytes of one pass over a micro-batch of `rows` x `seq` tokens on one rank.
    Training without checkpointing keeps every layer's saved tensors; with it, each layer's input plus
    one layer recomputed in backward. Scoring keeps one layer's at a time. Plus what the whole model
    shares: RoPE cos/sin, the (B, 1, T, T) block mask where the attention needs one (SDPA; our kernel
    reads positions), and the logits of one chunk (fp32 logits, softmax, gradient) for a causal LM, the
    fp32 hidden states for a scalar head."""
    tokens = rows * seq
    per_layer = layer_activation_bytes(s, dtype_bytes, gqa_native) * tokens
    if not trained:
        body = per_layer
    elif checkpointing:
        body = s.layers * tokens * s.hidden * dtype_bytes + per_layer
    else:
        body = s.layers * per_layer
    shared = 2 * s.head_dim * dtype_bytes * tokens + (0 if gqa_native else tokens * seq * dtype_bytes)
    head = 3 * 4 * min(chunk_tokens, tokens) * s.vocab if lm_head else tokens * s.hidden * 4
    return body + shared + head


def kv_bytes_per_token(s: Shape, dtype_bytes: int, tp: int) -> float:
    """KV cache per token on one GPU of a TP engine (KV heads split over the ranks, replicated below one)."""
    return 2 * s.layers * max(1.0, s.kv_heads / tp) * s.head_dim * dtype_bytes


# --------------------------------------------------------------------------- the plan


@dataclass
class RoleRow:
    role: str
    gpus: int
    nodes: int
    gpu: dict[str, float] = field(default_factory=dict)
    """Bytes per GPU by item (resident in this role's largest state)."""
    host: dict[str, float] = field(default_factory=dict)
    act_ckpt: float = 0.0
    act_full: float = 0.0
    note: str = ""

    def total(self, checkpointing: bool) -> float:
        return sum(self.gpu.values()) + (self.act_ckpt if checkpointing else self.act_full)


@dataclass
class Plan:
    cfg: Config
    rows: list[RoleRow]
    placement: object
    phases: dict[str, float]
    """Peak bytes on the fullest GPU per phase (colocated), or per role (separate)."""
    problems: list[str]
    gpus_needed: int
    kv: dict[str, float]


TRAINED = {"policy": True, "rm_helpful": True, "rm_safety": True, "reference": False, "critic": True}


def plan(cfg: Config, calibration: dict | None = None) -> Plan:
    """The plan of a config (pure arithmetic plus the placement code's bundle assignment)."""
    from llama_rlhf.config import ConfigError
    from llama_rlhf.orchestrator.cluster import Placement, gpu_layout, ppo_roles, roles_in_use

    c = cfg.cluster
    if not c.gpu:
        raise ConfigError("cluster.gpus_per_node: 0 is CPU mode; plan checks a GPU cluster (set gpus_per_node)")
    shape = model_shape(cfg)
    ppo = ppo_roles(cfg)
    n_bundles, _ = gpu_layout(c, ppo)
    have = c.num_nodes * c.gpus_per_node
    problems = []
    if n_bundles > have:
        problems.append(f"cluster: the job needs {n_bundles} GPUs, the cluster declares {have} "
                        f"({c.num_nodes} nodes x {c.gpus_per_node}); short by {n_bundles - have}")
    # bundles filled node by node, as PACK does on an idle cluster of identical nodes
    nodes = [f"node{min(i // c.gpus_per_node, c.num_nodes - 1)}" for i in range(n_bundles)]
    placement = Placement.assign(c, ppo, nodes)
    scale = (calibration or {}).get("activation_scale", 1.0)
    rows, score_act = [], {}
    for r in roles_in_use(c, ppo):
        row, score_act[r] = _role_row(cfg, r, shape, placement, nodes, scale)
        rows.append(row)
    row, kv = _rollout_row(cfg, shape, placement, nodes)
    rows.append(row)
    seq = cfg.model.max_seq_len
    if kv["tokens"] < seq:
        problems.append(f"rollout: the KV cache holds {max(kv['tokens'], 0):,.0f} tokens per engine, less than "
                        f"one {seq}-token context (vLLM refuses to start); short by "
                        f"{(seq * kv['per_token_bytes'] - kv['bytes']) / GIB:.1f} GiB per GPU")
    phases = _phase_peaks(cfg, {r.role: r for r in rows}, cfg.model.gradient_checkpointing, ppo, score_act)
    usable = (c.gpu_memory_gib - CUDA_OVERHEAD_GIB) * GIB
    for name, peak in phases.items():
        if peak > usable:
            problems.append(f"{name}: needs {peak / GIB:.1f} GiB per GPU, a GPU has {c.gpu_memory_gib:.0f} GiB "
                            f"(minus {CUDA_OVERHEAD_GIB:.0f} GiB runtime); short by {(peak - usable) / GIB:.1f} GiB")
    host = _host_per_node(cfg, rows, placement, nodes)
    if host > c.host_memory_gib * GIB:
        problems.append(f"host RAM: {host / GIB:.0f} GiB per node of offloaded states and sleeping engines, "
                        f"cluster.host_memory_gib is {c.host_memory_gib:.0f}")
    return Plan(cfg, rows, placement, phases, problems, n_bundles, kv)


def _role_row(cfg: Config, r: str, shape: Shape, placement, nodes: list[str], scale: float) -> tuple[RoleRow, float]:
    """One DeepSpeed role's row, and its scoring pass's activations (what runs beside others in PPO)."""
    from llama_rlhf.algorithms.logprobs import LOGIT_CHUNK_TOKENS as CHUNK

    c, rc, b, seq = cfg.cluster, cfg.cluster.role(r), DTYPE_BYTES[cfg.model.dtype], cfg.model.max_seq_len
    gqa = cfg.model.attn_implementation in ("auto", "llama_rlhf_gqa")  # the Triton kernel on GPU
    lm_head = r in ("policy", "reference")
    st = zero3_states(shape.params(lm_head), shape.largest_layer(), rc.ranks, TRAINED[r], b, rc.offload_optimizer,
                      rc.offload_params)
    if rc.zero_stage == 3:
        st["gpu"]["ZeRO buffers"] = ((c.zero.reduce_bucket_size if TRAINED[r] else 0) + c.zero.prefetch_bucket_size) * b
    # (rows, tokens per row) of the role's training micro-batch (the larger of SFT and PPO for the policy)
    sft_mb, ppo_mb = (cfg.sft.micro_batch_size, cfg.sft.seq_len), (cfg.ppo.micro_batch_size, seq)
    rows_, seq_ = {"policy": max(sft_mb, ppo_mb, key=lambda x: x[0] * x[1]), "critic": ppo_mb,
                   "rm_helpful": (2 * cfg.reward.helpful.micro_batch_pairs, cfg.reward.helpful.max_len),
                   "rm_safety": (2 * cfg.reward.safety.micro_batch_pairs, cfg.reward.safety.max_len)}.get(r, (0, 0))
    act = {}
    for ck in (True, False):
        score = activations(shape, rc.forward_micro_batch, seq, b, ck, gqa, CHUNK, lm_head, False)
        train = activations(shape, rows_, seq_, b, ck, gqa, CHUNK, lm_head, True) if TRAINED[r] else 0.0
        act[ck] = scale * max(train, score)
    score_act = scale * activations(shape, rc.forward_micro_batch, seq, b, False, gqa, CHUNK, lm_head, False)
    idx = placement.index[r]
    note = (f"{rc.ranks} ranks, ZeRO-{rc.zero_stage}" + (", optimizer offload" if rc.offload_optimizer else "")
            + (", parameter offload" if rc.offload_params else ""))
    return RoleRow(r, len(set(idx)), len({nodes[i] for i in idx}), st["gpu"], st["host"], act[True], act[False],
                   note), score_act


def _rollout_row(cfg: Config, shape: Shape, placement, nodes: list[str]) -> tuple[RoleRow, dict]:
    """The engines: weights / TP and the KV cache that `gpu_memory_utilization` leaves after them and
    vLLM's profiling pass (or the explicit `kv_cache_gib`)."""
    c, ro, seq = cfg.cluster, cfg.cluster.rollout, cfg.model.max_seq_len
    rb, tp = DTYPE_BYTES[ro.dtype], ro.tensor_parallel_size
    weights = shape.params(True) * rb / tp
    profile = activations(shape, 1, 8192, rb, False, True, 8192, True, False)
    if ro.kv_cache_gib is None:
        kv = ro.gpu_memory_utilization * c.gpu_memory_gib * GIB - weights - profile
    else:
        kv = ro.kv_cache_gib * GIB
    per_tok = kv_bytes_per_token(shape, rb, tp)
    tokens = kv / per_tok
    row = RoleRow("rollout", ro.engines * tp, len({nodes[i] for g in placement.engines for i in g}),
                  {"weights": weights, "KV cache": max(kv, 0.0), "activations (profile)": profile},
                  {"sleeping weights": weights} if c.placement == "colocated" else {},
                  note=f"{ro.engines} engines x TP {tp}; KV for {tokens / 1e3:,.0f}K tokens "
                       f"({tokens / seq:.0f} full contexts)")
    return row, {"per_token_bytes": per_tok, "tokens": tokens, "bytes": kv}


def _phase_peaks(cfg: Config, rows: dict[str, RoleRow], ckpt: bool, ppo: tuple[str, ...],
                 score_act: dict[str, float]) -> dict[str, float]:
    """Peak bytes per GPU. Separate: each role on its own GPUs (the reference may share the policy's).
    Colocated: per phase, the resident states of every role on a GPU plus the activations of the passes
    running at once (PPO updates the policy and the critic together)."""
    c = cfg.cluster

    def states(r):
        return sum(rows[r].gpu.values()) if r in rows else 0.0

    def act(r):
        return (rows[r].act_ckpt if ckpt else rows[r].act_full) if r in rows else 0.0

    if c.placement == "separate":
        out = {}
        for r in rows:
            if r == "rollout":
                out["rollout"] = states(r)
            elif r == "reference" and c.colocate_policy_reference:
                continue
            elif r == "policy" and c.colocate_policy_reference and "reference" in rows:
                # PPO scores with both at once; the policy trains alone
                both = max(act(r), score_act["policy"] + score_act["reference"])
                out["policy + reference (shared GPUs)"] = states(r) + states("reference") + both
            else:
                out[r] = states(r) + act(r)
        return out
    frozen = {r: rows[r].gpu.get("weights", 0.0) + rows[r].gpu.get("gathered layer", 0.0) / 2 for r in rows}
    out = {"sft": states("policy") + act("policy"),
           "rm": states("policy") + states("rm_helpful") + states("rm_safety") + max(act("rm_helpful"),
                                                                                      act("rm_safety"))}
    if ppo:
        out["ppo"] = (states("policy") + states("critic") + frozen["reference"] + frozen["rm_helpful"]
                      + frozen["rm_safety"] + act("policy") + act("critic"))
    resident = sum(frozen[r] for r in ("reference", "rm_helpful", "rm_safety") if r in rows)
    out["rollout"] = resident + c.rollout.gpu_memory_utilization * c.gpu_memory_gib * GIB
    return out


def _host_per_node(cfg: Config, rows: list[RoleRow], placement, nodes: list[str]) -> float:
    """Host RAM of the fullest node: offloaded states of the ranks on it (colocated: the trainable
    roles' whole states during rollouts) and sleeping engine weights."""
    c = cfg.cluster
    per_node: dict[str, float] = {}
    for row in rows:
        if row.role == "rollout":
            if c.placement == "colocated":
                for g in placement.engines:
                    for i in g:
                        per_node[nodes[i]] = per_node.get(nodes[i], 0.0) + row.host.get("sleeping weights", 0.0)
            continue
        offloaded = sum(row.host.values())
        if c.placement == "colocated" and row.role in ("policy", "critic", "rm_helpful", "rm_safety"):
            offloaded += sum(v for k, v in row.gpu.items() if k != "gathered layer")
        for i in placement.index.get(row.role, []):
            per_node[nodes[i]] = per_node.get(nodes[i], 0.0) + offloaded
    return max(per_node.values(), default=0.0)


# --------------------------------------------------------------------------- output


def _g(x: float) -> str:
    return f"{x / GIB:.1f}"


def format_plan(p: Plan) -> str:
    c, m = p.cfg.cluster, p.cfg.model
    shape = model_shape(p.cfg)
    ckpt = m.gradient_checkpointing
    lines = [f"model {m.preset} ({shape.params() / 1e9:.2f}B, {m.dtype}); cluster {c.num_nodes} nodes x "
             f"{c.gpus_per_node} GPUs x {c.gpu_memory_gib:.0f} GiB, {c.placement} placement; job uses "
             f"{p.gpus_needed} GPUs; gradient checkpointing {'on' if ckpt else 'off'}", "",
             "| role | GPUs | nodes | weights | grads | optimizer | gathered layer | ZeRO buffers | act. (ckpt) "
             "| act. (no ckpt) | vLLM KV | total / GPU | host / rank | layout |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in p.rows:
        g = r.gpu
        act = r.act_ckpt if ckpt else r.act_full
        total = sum(g.values()) + (act if r.role != "rollout" else 0.0)
        lines.append(f"| {r.role} | {r.gpus} | {r.nodes} | {_g(g.get('weights', 0))} | {_g(g.get('gradients', 0))} "
                     f"| {_g(g.get('optimizer', 0))} | {_g(g.get('gathered layer', 0))} "
                     f"| {_g(g.get('ZeRO buffers', 0))} | {_g(r.act_ckpt)} "
                     f"| {_g(r.act_full)} | {_g(g.get('KV cache', 0))} | {_g(total)} | {_g(sum(r.host.values()))} "
                     f"| {r.note} |")
    lines += ["", "GiB. Peak per GPU by " + ("phase (roles sharing each GPU):" if c.placement == "colocated"
                                             else "role (each on its own GPUs):")]
    for name, peak in p.phases.items():
        lines.append(f"  {name:34s} {peak / GIB:6.1f} GiB of {c.gpu_memory_gib:.0f} "
                     f"(+{CUDA_OVERHEAD_GIB:.0f} runtime)")
    lines.append("")
    lines.append("placement (bundle -> node, PACK on an idle cluster):")
    for r in p.rows:
        if r.role == "rollout":
            groups = p.placement.engines
            shown = "; ".join(f"engine {k}: {g}" for k, g in enumerate(groups[:4]))
            lines.append(f"  rollout    {shown}" + (" ..." if len(groups) > 4 else ""))
        else:
            idx = p.placement.index[r.role]
            lines.append(f"  {r.role:10s} bundles {idx[0]}..{idx[-1]}")
    lines.append("")
    lines.append("FITS" if not p.problems else "DOES NOT FIT:\n" + "\n".join(f"  {x}" for x in p.problems))
    return "\n".join(lines)


def main(config: str, overrides: list[str], calibration: str | None = None) -> int:
    """The CLI entry: print the plan, exit 0 when it fits, 1 (with the reasons) when it does not."""
    from llama_rlhf.config import load_config

    cfg = load_config(config, overrides)
    cal = json.loads(Path(calibration).read_text()) if calibration else None
    p = plan(cfg, cal)
    print(format_plan(p))
    if p.problems:
        print(f"llama-rlhf plan: {config} does not fit: {p.problems[0]}", file=sys.stderr)
        return 1
    return 0
