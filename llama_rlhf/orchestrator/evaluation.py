"""Measuring a policy: greedy answers to held-out prompts scored by the gold judge, Ghost Attention
consistency over turns, and reward-model accuracy per rating level.

A user's eval prompts have no gold judge (it only knows the embedded world): their answers are scored
by the reward models instead, and each version's win rate over SFT is judged by the same RMs (the
paper's RM-based evaluation), labelled as such.

The judge only evaluates; nothing here feeds training.
"""

from __future__ import annotations

import torch

from llama_rlhf.algorithms.reward import rm_accuracy
from llama_rlhf.data.chat import encode_exchange, encode_prompt
from llama_rlhf.data.records import RATINGS


def gold_eval(rollout, tok, prompts, max_new_tokens: int, max_prompt_len: int, temperature: float = 0.0,
              samples: int = 1, seed: int = 0) -> dict:
    """Answers to held-out prompts (greedy, or `samples` seeded samples each at `temperature`); mean gold
    helpfulness (helpful prompts) and safety (unsafe prompts), and both over all prompts."""
    from llama_rlhf.data.world import judge

    n = 1 if temperature == 0 else samples
    ids = [encode_prompt(tok, p.messages)[-max_prompt_len:] for p in prompts]
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


def _mean(xs) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def rm_judged(prompts, answers: list[str], score, baseline: list[str] | None = None) -> dict:
    """RM scores of answers: the helpfulness RM on non-safety prompts, the safety RM on safety prompts
    (`score(which, prompts, answers) -> list[float]`), and, given SFT's answers to the same prompts, the
    win rate over them judged by the same RM (a tie counts one half)."""
    out: dict = {"judge": "reward models"}
    wins_all: list[float] = []
    for which, safety in (("helpful", False), ("safety", True)):
        idx = [i for i, p in enumerate(prompts) if p.is_safety == safety]
        ps = [prompts[i] for i in idx]
        s = score(which, ps, [answers[i] for i in idx]) if idx else []
        out[f"rm_{which}"] = _mean(s)
        if baseline is not None:
            b = score(which, ps, [baseline[i] for i in idx]) if idx else []
            wins = [1.0 if x > y else 0.5 if x == y else 0.0 for x, y in zip(s, b)]
            out[f"rm_win_rate_vs_sft/{which}"] = _mean(wins)
            wins_all += wins
    if baseline is not None:
        out["rm_win_rate_vs_sft"] = _mean(wins_all)
    # no gold judge for these prompts: its columns stay empty rather than absent
    out.update(dict.fromkeys(("gold_helpfulness", "gold_safety", "gold_helpfulness_all", "gold_safety_all"),
                             float("nan")))
    return out


def rm_eval_prompts(rollout, tok, prompts, rms: dict, max_new_tokens: int, max_prompt_len: int,
                    baseline: list[str] | None = None) -> dict:
    """Greedy answers to a user's eval prompts, judged by the reward models `rms` ({"helpful", "safety"})."""
    from llama_rlhf.actors.batches import sequence_batch

    ids = [encode_prompt(tok, p.messages)[-max_prompt_len:] for p in prompts]
    outs = rollout.generate(ids, n=1, temperature=0.0, max_new_tokens=max_new_tokens)
    answers = [tok.decode(o[0].token_ids) for o in outs]

    def score(which, ps, texts):
        pairs = [encode_exchange(tok, p.messages, t) for p, t in zip(ps, texts)]
        batch = sequence_batch([q[-max_prompt_len:] for q, _ in pairs], [a for _, a in pairs], tok.pad_id)
        return [float(x) for x in rms[which].score(batch)]

    out = rm_judged(prompts, answers, score, baseline)
    out["mean_response_tokens"] = _mean([len(o[0].token_ids) for o in outs])
    out["answers"] = answers
    out["samples"] = [{"id": p.id, "prompt": p.user_text, "response": t} for p, t in list(zip(prompts, answers))[:8]]
    return out


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
        ids = [encode_prompt(tok, h)[-max_prompt_len:] for h in histories]
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
