"""Cross-field checks of the config that a single field cannot express: every one of them would
otherwise fail hours into a run (after SFT and the reward models), so they run at load time and
name the fields and values involved. Called by `Config`'s validator; returns messages, raises nothing.
"""

from __future__ import annotations


def cross_field_errors(cfg) -> list[str]:
    errors = []
    m = cfg.model.max_seq_len
    gen = {"ppo.max_new_tokens": cfg.ppo.max_new_tokens,
           "rejection_sampling.max_new_tokens": cfg.rejection_sampling.max_new_tokens,
           "eval.max_new_tokens": cfg.eval.max_new_tokens}
    key, longest = max(gen.items(), key=lambda kv: kv[1])
    if longest >= m:
        errors.append(f"{key}: must be < model.max_seq_len ({m}) so a prompt has room "
                      f"(prompt budget {m - longest} tokens), got {longest}")
    for key, n in (("sft.seq_len", cfg.sft.seq_len), ("reward.helpful.max_len", cfg.reward.helpful.max_len),
                   ("reward.safety.max_len", cfg.reward.safety.max_len)):
        if n > m:
            errors.append(f"{key}: must be <= model.max_seq_len ({m}), got {n}")
    bad = [t for t in cfg.rejection_sampling.temperatures if not t > 0]
    if bad:
        errors.append(f"rejection_sampling.temperatures: every temperature must be > 0, got {bad[0]!r}")
    g = cfg.gatt
    if g.temperature == 0 and g.samples_per_turn > 1:
        errors.append(f"gatt.samples_per_turn: greedy GAtt sampling (gatt.temperature 0) gives one answer per "
                      f"turn, must be 1, got {g.samples_per_turn}")
    errors += _gpu_errors(cfg.cluster)
    return errors + _ppo_errors(cfg.ppo)


def _ppo_errors(p) -> list[str]:
    errors = []
    if p.batch_size % p.samples_per_prompt:
        errors.append(f"ppo.batch_size: must be a multiple of ppo.samples_per_prompt ({p.samples_per_prompt}) "
                      f"(it counts responses), got {p.batch_size}")
    if not p.uses_critic and p.samples_per_prompt < 2:
        errors.append("ppo.samples_per_prompt: the rloo advantage needs >= 2 responses per prompt (each one's "
                      f"baseline is the others' mean), got {p.samples_per_prompt}")
    if not p.uses_critic and p.critic_warmup_iterations:
        errors.append(f"ppo.critic_warmup_iterations: the rloo advantage has no critic to warm up, got "
                      f"{p.critic_warmup_iterations}")
    if p.critic_warmup_iterations >= p.iterations:
        errors.append(f"ppo.critic_warmup_iterations: must be < ppo.iterations ({p.iterations}) or the policy "
                      f"never trains, got {p.critic_warmup_iterations}")
    return errors


def _gpu_errors(cluster) -> list[str]:
    """Ranks vs GPUs, where the config declares the GPUs (the full fit is `llama-rlhf plan`)."""
    if not cluster.gpu:
        return []
    total = cluster.num_nodes * cluster.gpus_per_node
    errors = []
    for name, role in cluster.roles():
        n = role.ranks
        if n > total:
            errors.append(f"cluster.{name}.ranks: one GPU per rank, the cluster has {total} GPUs "
                          f"({cluster.num_nodes} nodes x {cluster.gpus_per_node}), got {n}")
    r = cluster.rollout
    if r.engines * r.tensor_parallel_size > total:
        errors.append(f"cluster.rollout: {r.engines} engines x {r.tensor_parallel_size} GPUs exceed the cluster's "
                      f"{total} GPUs")
    return errors
