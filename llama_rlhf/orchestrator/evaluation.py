"""Measuring a policy: greedy answers to held-out prompts scored by the gold judge, Ghost Attention
consistency over turns, and reward-model accuracy per rating level.

The judge only evaluates; nothing here feeds training.
"""

from __future__ import annotations

import torch

from llama_rlhf.algorithms.reward import rm_accuracy
from llama_rlhf.data.chat import encode_prompt
from llama_rlhf.data.records import RATINGS
from llama_rlhf.data.truncate import fit_prompt


def gold_eval(rollout, tok, prompts, max_new_tokens: int, max_prompt_len: int, temperature: float = 0.0,
              samples: int = 1, seed: int = 0) -> dict:
    """Answers to held-out prompts (greedy, or `samples` seeded samples each at `temperature`); mean gold
    helpfulness (helpful prompts) and safety (unsafe prompts), and both over all prompts."""
    from llama_rlhf.data.world import judge

    n = 1 if temperature == 0 else samples
    ids = [fit_prompt(encode_prompt(tok, p.messages), max_prompt_len, tok.bos_id)[0] for p in prompts]
    outs = rollout.generate(ids, n=n, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
    flat = [(p, s) for p, o in zip(prompts, outs) for s in o]
    texts = [tok.decode(s.token_ids) for _, s in flat]
    scores = [judge(p, t) for (p, _), t in zip(flat, texts)]
    helpful = [s.helpfulness for (p, _), s in zip(flat, scores) if not p.is_safety]
    unsafe = [s.safety for (p, _), s in zip(flat, scores) if p.is_safety]
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")
    by_kind: dict[str, list[float]] = {}
    for (p, _), s in zip(flat, scores):
        by_kind.setdefault(p.kind, []).append(s.safety if p.is_safety else s.helpfulness)
    return {
        "gold_helpfulness": mean(helpful),
        "gold_safety": mean(unsafe),
        "gold_helpfulness_all": mean([s.helpfulness for s in scores]),
        "gold_safety_all": mean([s.safety for s in scores]),
        "mean_response_tokens": mean([len(s.token_ids) for _, s in flat]),
        # per prompt kind: helpfulness of helpful / GAtt prompts, safety of unsafe ones
        **{f"gold_by_kind/{k}": mean(v) for k, v in sorted(by_kind.items())},
        "samples": [{"id": p.id, "prompt": p.user_text, "response": t} for (p, _), t in list(zip(flat, texts))[:8]],
    }


def gatt_consistency(rollout, tok, dialogs, turns: int, max_new_tokens: int, max_prompt_len: int) -> list[float]:
    """Fraction of held-out dialogs whose answer at turn t (1..turns) keeps the system instruction given
    only at the start: the model answers every turn greedily and its own answers build the history."""
    from llama_rlhf.data.world import keeps

    if not dialogs:
        return []
    turns = min(turns, min(len(d.user_turns) for d in dialogs))
    histories: list[list[dict]] = [[{"role": "system", "content": d.system}] for d in dialogs]
    kept = []
    for t in range(turns):
        for h, d in zip(histories, dialogs):
            h.append({"role": "user", "content": d.user_turns[t]})
        ids = [fit_prompt(encode_prompt(tok, h), max_prompt_len, tok.bos_id)[0] for h in histories]
        outs = rollout.generate(ids, n=1, temperature=0.0, max_new_tokens=max_new_tokens)
        answers = [tok.decode(o[0].token_ids) for o in outs]
        kept.append(sum(keeps(d.instruction_id, a) for d, a in zip(dialogs, answers)) / len(dialogs))
        for h, a in zip(histories, answers):
            h.append({"role": "assistant", "content": a})
    return kept


def rm_eval(rm_group, pairs) -> dict:
    """Accuracy (r_chosen > r_rejected) overall and per rating level on held-out pairs."""
    r_c, r_r = rm_group.pair_scores(pairs)
    acc = rm_accuracy(r_c, r_r, pairs.rating)
    out = {"accuracy": float(acc["accuracy"])}
    for name in RATINGS:
        out[f"accuracy/{name}"] = float(acc[f"accuracy/{name}"])
        out[f"count/{name}"] = int(acc[f"count/{name}"])
    out["margin_mean"] = float(torch.mean(r_c - r_r))
    return out
