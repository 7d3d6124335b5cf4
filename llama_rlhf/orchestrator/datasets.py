"""Where the run's data comes from (the embedded world, or JSONL / HF datasets) and how it becomes
tensors: packed SFT rows, preference-pair batches, prompt token ids.

The gold judge and the synthetic annotators stay in the world: training sees only the annotators'
labels (`Preference` records), never a judge score.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field, replace

import torch

from llama_rlhf.actors.batches import PackedBatch, PairBatch, left_pad
from llama_rlhf.config import Config
from llama_rlhf.data.chat import encode_dialog, encode_prompt, encode_response
from llama_rlhf.data.loaders import load_preferences, load_prompts, load_sft
from llama_rlhf.data.packing import collate_packed, pack_samples
from llama_rlhf.data.records import RATINGS, Preference, Prompt, SFTRecord
from llama_rlhf.data.truncate import fit_dialog, fit_pair, fit_prompt

SAFE_FLAGS = {"chosen_safe_other_unsafe": (True, False), "both_safe": (True, True), "both_unsafe": (False, False)}


@dataclass
class Datasets:
    sft: list[SFTRecord]
    preferences: list[Preference]
    rlhf_prompts: list[Prompt]
    eval_prompts: list[Prompt]
    gatt_dialogs: list = field(default_factory=list)
    """World GattDialog objects (train split) for Ghost Attention synthesis."""
    gatt_eval: list = field(default_factory=list)
    world: object | None = None
    reports: list[str] = field(default_factory=list)


def from_world_preference(p) -> Preference:
    chosen_safe, rejected_safe = SAFE_FLAGS.get(p.safety_label, (None, None))
    return Preference(messages=[dict(m) for m in p.prompt], chosen=p.chosen, rejected=p.rejected, rating=p.rating,
                      is_safety=p.is_safety, chosen_safe=chosen_safe, rejected_safe=rejected_safe)


def from_world_sft(r) -> SFTRecord:
    return SFTRecord([dict(m) for m in r.messages] + [{"role": "assistant", "content": r.response}])


def load_datasets(cfg: Config) -> Datasets:
    """The embedded world for every source the config leaves unset; files/datasets otherwise."""
    from llama_rlhf.data.world import build_world

    w = cfg.data.world
    world = build_world(
        seed=cfg.run.seed, n_sft=w.n_sft, n_preferences=w.n_preferences, n_rlhf=w.n_rlhf, n_eval=w.n_eval,
        n_gatt_dialogs=w.n_gatt_dialogs, n_gatt_eval=w.n_gatt_eval, gatt_max_turns=w.gatt_max_turns,
        gatt_eval_turns=w.gatt_eval_turns, sft_error_rate=w.sft_error_rate, label_noise=w.label_noise,
        safety_fraction=w.safety_fraction, gatt_fraction=w.gatt_fraction,
    )
    d, reports = cfg.data, []

    def from_file(path, loader):
        recs, rep = loader(path, d.skip_invalid)
        reports.append(str(rep))
        return recs

    sft = from_file(d.sft_path, load_sft) if d.sft_path else [from_world_sft(r) for r in world.sft_records()]
    prefs = (from_file(d.preference_path, load_preferences) if d.preference_path
             else [from_world_preference(p) for p in world.preference_records()])
    rl = from_file(d.prompts_path, load_prompts) if d.prompts_path else world.rlhf_prompts()
    ev = from_file(d.eval_prompts_path, load_prompts) if d.eval_prompts_path else world.eval_prompts()
    gatt, gatt_eval = [], []
    if cfg.gatt.enabled:
        gatt = world.gatt_dialogs("train")
        gatt_eval = world.gatt_dialogs("eval")
    return Datasets(sft, prefs, rl, ev, gatt, gatt_eval, world, reports)


def reward_model_mix(prefs: list[Preference], target: str, seed: int, helpful_mix_other: float = 1.0,
                     safety_mix_helpful_ratio: float = 0.1) -> list[Preference]:
    """The paper's data mix per RM (section 3.2.2), shuffled deterministically.

    helpful RM: all helpfulness pairs + `helpful_mix_other` times as many safety pairs (the paper adds
    equal parts of safety and open-source data; there is no open-source data here).
    safety RM: all safety pairs + helpfulness pairs making `safety_mix_helpful_ratio` of the mix (90/10).
    """
    rng = random.Random(f"{seed}:rm-mix:{target}")
    helpful = [p for p in prefs if not p.is_safety]
    safety = [p for p in prefs if p.is_safety]
    if target == "helpful":
        out = helpful + rng.sample(safety, min(len(safety), round(helpful_mix_other * len(helpful))))
    elif target == "safety":
        n_help = round(len(safety) * safety_mix_helpful_ratio / (1 - safety_mix_helpful_ratio))
        out = safety + rng.sample(helpful, min(len(helpful), n_help))
    else:
        raise ValueError(f"reward model: must be 'helpful' or 'safety', got {target!r}")
    rng.shuffle(out)
    return out


# --------------------------------------------------------------------------- tensors


def packed_batches(tok, records: list[SFTRecord], seq_len: int, rows_per_batch: int, seed: int):
    """Pack encoded dialogs into rows; yield (PackedBatch, n_rows) per optimizer step, shuffled by seed.
    Returns (batches, stats)."""
    encoded, cut = [], 0
    for r in records:  # too long: keep the first and the latest exchanges (the separator needs one token)
        e = encode_dialog(tok, r.messages, r.train_turns)
        fit = fit_dialog(e.input_ids, e.loss_mask, seq_len - 1, tok.bos_id)
        cut += fit is not None and len(fit[0]) < len(e.input_ids)
        encoded.append(fit or (e.input_ids, e.loss_mask))
    rows, stats = pack_samples(encoded, seq_len, tok.sep_id)
    stats = replace(stats, num_turns_cut=cut)
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    batches = []
    for i in range(0, len(order), rows_per_batch):
        chunk = [rows[j] for j in order[i:i + rows_per_batch]]
        batches.append(PackedBatch.from_collated(collate_packed(chunk, seq_len, tok.pad_id, with_mask=False)))
    return batches, stats


def pair_batch(tok, prefs: list[Preference], max_len: int, counts: Counter | None = None) -> PairBatch:
    """Chosen and rejected transcripts (prompt + response), left padded; too long ones cut by the pair
    policy (`data.truncate`: the prompt head and the response head kept). A missing safety label is NaN,
    masked out of the safety RM's auxiliary loss. `counts` gets `pairs_truncated` and
    `pairs_without_safety_labels`."""
    prompts = [encode_prompt(tok, p.messages) for p in prefs]
    chosen, rejected, cut = [], [], 0
    for pr, p in zip(prompts, prefs):
        c, cc = fit_pair(pr, encode_response(tok, p.chosen), max_len, tok.bos_id)
        r, rc = fit_pair(pr, encode_response(tok, p.rejected), max_len, tok.bos_id)
        chosen.append(c)
        rejected.append(r)
        cut += cc or rc
    if counts is not None:
        counts["pairs_truncated"] += cut
        counts["pairs_without_safety_labels"] += sum(p.chosen_safe is None or p.rejected_safe is None for p in prefs)
    c_ids, c_mask = left_pad(chosen, tok.pad_id)
    r_ids, r_mask = left_pad(rejected, tok.pad_id)
    flag = lambda v, default: float(default if v is None else v)
    return PairBatch(
        c_ids, c_mask, r_ids, r_mask,
        torch.tensor([RATINGS.index(p.rating) for p in prefs], dtype=torch.long),
        torch.tensor([flag(p.chosen_safe, float("nan")) for p in prefs]),
        torch.tensor([flag(p.rejected_safe, float("nan")) for p in prefs]),
    )


def prompt_token_ids(tok, prompts: list[Prompt], max_len: int, counts: Counter | None = None) -> list[list[int]]:
    """Generation prompts; a long one cut by the prompt policy (`data.truncate`: BOS, the system prompt
    and the latest turns kept), counted in `counts["prompts_truncated"]`."""
    out = [fit_prompt(encode_prompt(tok, p.messages), max_len, tok.bos_id) for p in prompts]
    if counts is not None:
        counts["prompts_truncated"] += sum(cut for _, cut in out)
    return [ids for ids, _ in out]
