"""Measuring a policy: sampled answers to held-out prompts scored by the gold judge (with bootstrap 95%
intervals over prompts), the false-refusal rate on benign prompts, Ghost Attention consistency over
turns, and reward-model accuracy per rating level.

A user's eval prompts have no gold judge (it only knows the embedded world): their answers are scored
by the reward models instead, and each version's win rate over SFT is judged by the same RMs (the
paper's RM-based evaluation), labelled as such.

The judge only evaluates here; in training it is seen only through the synthetic annotators' labels.
"""

from __future__ import annotations

import torch

from llama_rlhf.algorithms.bootstrap import mean_ci
from llama_rlhf.algorithms.reward import rm_accuracy
from llama_rlhf.data.chat import encode_exchange, encode_prompt
from llama_rlhf.data.records import RATINGS
from llama_rlhf.data.truncate import fit_prompt


def _mean(xs) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def prompt_ids(tok, prompts, max_prompt_len: int) -> list[list[int]]:
    """Eval prompts as ids; an eval prompt is never cut: a prompt over the budget is an error."""
    out = []
    for p in prompts:
        ids = encode_prompt(tok, p.messages)
        if len(ids) > max_prompt_len:
            raise ValueError(f"eval prompt {p.id}: {len(ids)} tokens exceed the prompt budget of "
                             f"{max_prompt_len} (model.max_seq_len - max_new_tokens)")
        out.append(ids)
    return out


def _exchanges(tok, ids: list[int]) -> int:
    """Exchanges in a Llama 2 chat prompt: each starts with BOS."""
    return sum(t == tok.bos_id for t in ids)


def score_answers(prompts, answers: list[list[str]]) -> dict:
    """Per-prompt gold scores (mean over the prompt's samples) and their means with 95% intervals.

    helpfulness: helpful and GAtt prompts; safety: unsafe prompts; false refusal: share of answers to
    benign prompts that refuse (the paper's over-caution measure)."""
    from llama_rlhf.data.world import false_refusal, judge

    per = {"helpfulness": {}, "safety": {}, "false_refusal": {}}
    by_kind: dict[str, list[float]] = {}
    for p, texts in zip(prompts, answers):
        scores = [judge(p, t) for t in texts]
        if p.is_safety:
            per["safety"][p.id] = _mean([s.safety for s in scores])
        else:
            per["helpfulness"][p.id] = _mean([s.helpfulness for s in scores])
            per["false_refusal"][p.id] = _mean([float(false_refusal(p, t)) for t in texts])
        by_kind.setdefault(p.kind, []).append(per["safety" if p.is_safety else "helpfulness"][p.id])
    out: dict = {"per_prompt": per}
    for name, key in (("helpfulness", "gold_helpfulness"), ("safety", "gold_safety"),
                      ("false_refusal", "false_refusal")):
        m, lo, hi = mean_ci(list(per[name].values()))
        out[key], out[f"{key}_ci"] = m, [lo, hi]
    out.update({f"gold_by_kind/{k}": _mean(v) for k, v in sorted(by_kind.items())})
    return out


def gold_eval(rollout, tok, prompts, max_new_tokens: int, max_prompt_len: int, temperature: float = 0.0,
              samples: int = 1, seed: int = 0) -> dict:
    """Answers to held-out prompts (greedy, or `samples` seeded samples each at `temperature`) scored by
    the gold judge: means with bootstrap intervals over prompts, per-prompt scores kept for paired
    comparisons between versions."""
    n = 1 if temperature == 0 else samples
    outs = rollout.generate(prompt_ids(tok, prompts, max_prompt_len), n=n, temperature=temperature,
                            max_new_tokens=max_new_tokens, seed=seed)
    answers = [[tok.decode(s.token_ids) for s in o] for o in outs]
    out = score_answers(prompts, answers)
    out["mean_response_tokens"] = _mean([len(s.token_ids) for o in outs for s in o])
    out["temperature"], out["samples_per_prompt"], out["prompts"] = temperature, n, len(prompts)
    out["samples"] = [{"id": p.id, "prompt": p.user_text, "response": a[0]} for p, a in zip(prompts[:8], answers)]
    return out


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

    ids = [fit_prompt(encode_prompt(tok, p.messages), max_prompt_len, tok.bos_id)[0] for p in prompts]
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


def gatt_consistency(rollout, tok, dialogs, turns: int, max_new_tokens: int, max_prompt_len: int) -> dict:
    """Share of held-out dialogs whose answer at turn t (1..turns) keeps the system instruction given
    only at the start: the model answers every turn greedily and its own answers build the history.
    When the history outgrows the prompt budget the oldest exchanges are dropped (the system prompt and
    the current turn always stay): `dropped_exchanges[t]` says how many, on average, at turn t.
    `kept_by_dialog[t][i]`: 1 where dialog i's answer at turn t+1 keeps it (the report's intervals)."""
    from llama_rlhf.data.world import keeps

    if not dialogs:
        return {"kept": [], "kept_by_dialog": [], "dropped_exchanges": [], "dialogs": 0}
    turns = min(turns, min(len(d.user_turns) for d in dialogs))
    histories: list[list[dict]] = [[{"role": "system", "content": d.system}] for d in dialogs]
    kept, by_dialog, dropped = [], [], []
    for t in range(turns):
        for h, d in zip(histories, dialogs):
            h.append({"role": "user", "content": d.user_turns[t]})
        fitted = [fit_prompt(encode_prompt(tok, h), max_prompt_len, tok.bos_id)[0] for h in histories]
        outs = rollout.generate(fitted, n=1, temperature=0.0, max_new_tokens=max_new_tokens)
        answers = [tok.decode(o[0].token_ids) for o in outs]
        by_dialog.append([int(keeps(d.instruction_id, a)) for d, a in zip(dialogs, answers)])
        kept.append(sum(by_dialog[-1]) / len(dialogs))
        dropped.append(_mean([_exchanges(tok, encode_prompt(tok, h)) - _exchanges(tok, f)
                              for h, f in zip(histories, fitted)]))
        for h, a in zip(histories, answers):
            h.append({"role": "assistant", "content": a})
    return {"kept": kept, "kept_by_dialog": by_dialog, "dropped_exchanges": dropped, "dialogs": len(dialogs)}


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
