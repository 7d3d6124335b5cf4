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
from llama_rlhf.config import Config, ConfigError
from llama_rlhf.data.chat import encode_dialog, encode_exchange, encode_prompt
from llama_rlhf.data.loaders import PreferenceOptions, load_preferences, load_prompts, load_sft
from llama_rlhf.data.mix import mix_report
from llama_rlhf.data.packing import collate_packed, pack_samples
from llama_rlhf.data.records import RATINGS, Preference, Prompt, SFTRecord
from llama_rlhf.data.truncate import fit_dialog, fit_pair, fit_prompt


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
    rm_eval: dict[str, list[Preference]] = field(default_factory=dict)
    """Held-out pairs per RM ("helpful", "safety") from the given sources (`data.rm_eval_pairs`); empty =
    the world's eval pairs."""


def load_datasets(cfg: Config) -> Datasets:
    """The embedded world for every source the config leaves unset; files/datasets otherwise."""
    from llama_rlhf.data.world import build_world

    seed = cfg.data.seed_or(cfg.run.seed)
    world = build_world(cfg.data.world, seed=seed)  # the config object whole: every field reaches it
    d, reports = cfg.data, []

    def from_file(path, loader):
        recs, rep = loader(path, d.skip_invalid)
        reports.append(str(rep))
        return recs

    sft = from_file(d.sft_path, load_sft) if d.sft_path else world.sft_records()
    prefs = _preferences(cfg, world, reports)
    prefs, rm_eval = _hold_out(prefs, d.rm_eval_pairs, seed, reports)
    reports += mix_report(prefs, cfg.reward.helpful_mix_other, cfg.reward.safety_mix_helpful_ratio)
    rl = from_file(d.prompts_path, load_prompts) if d.prompts_path else world.rlhf_prompts()
    ev = from_file(d.eval_prompts_path, load_prompts) if d.eval_prompts_path else world.eval_prompts()
    gatt, gatt_eval = [], []
    if cfg.gatt.enabled:
        gatt = world.gatt_dialogs("train")
        gatt_eval = world.gatt_dialogs("eval")
    return Datasets(sft, prefs, rl, ev, gatt, gatt_eval, world, reports, rm_eval)


def _hold_out(prefs: list[Preference], n: int, seed: int, reports: list[str]):
    """(training pairs, {"helpful": n non-safety pairs, "safety": n safety pairs}) drawn by `seed`; too few
    pairs on a side to leave any for training is refused here, at start."""
    if n == 0:
        return prefs, {}
    rng = random.Random(f"{seed}:rm-eval-holdout")
    held: dict[str, list[Preference]] = {}
    for which, safety in (("helpful", False), ("safety", True)):
        side = [p for p in prefs if p.is_safety == safety]
        if len(side) <= n:
            raise ConfigError(f"data.rm_eval_pairs: {n} held out per RM leaves no {which} RM training pairs "
                             f"(the sources hold {len(side)})")
        held[which] = rng.sample(side, n)
    out = {id(p) for ps in held.values() for p in ps}
    reports.append(f"RM accuracy on {n} held-out pairs per RM (data.rm_eval_pairs), not trained on")
    return [p for p in prefs if id(p) not in out], held


def _preferences(cfg: Config, world, reports: list[str]) -> list[Preference]:
    """Every preference source, each pair tagged with its source and role."""
    d, prefs = cfg.data, []
    sources = [(s.name or s.path, s.path, s.kind, s.is_safety) for s in d.preferences]
    if d.preference_path:
        sources.append((d.preference_path, d.preference_path, "", None))
    for name, path, kind, is_safety in sources:
        safety_side = kind in ("safety", "harmless")
        opts = PreferenceOptions(is_safety=safety_side if is_safety is None else is_safety,
                                 safety_first=safety_side, gap_thresholds=d.score_gap_thresholds)
        recs, rep = load_preferences(path, d.skip_invalid, opts)
        reports.append(str(rep))
        for p in recs:
            p.source, p.mix_role = name, kind
        prefs += recs
    if not sources:
        prefs = world.preference_records()
        for p in prefs:
            p.source = "world"
    return prefs


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
    chosen, rejected, cut = [], [], 0
    for p in prefs:
        c, cc = fit_pair(*encode_exchange(tok, p.messages, p.chosen), max_len, tok.bos_id)
        r, rc = fit_pair(*encode_exchange(tok, p.messages, p.rejected), max_len, tok.bos_id)
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
