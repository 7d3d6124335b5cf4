"""Over-length sequences are cut by policies that keep BOS, the system prompt and the latest turns, and
counted; unlabelled pairs are masked out of the safety auxiliary loss; non-finite values stop a stage."""

import math
from collections import Counter

import pytest
import torch

from llama_rlhf.algorithms.rejection import RejectionArchive
from llama_rlhf.algorithms.reward import safety_aux_loss
from llama_rlhf.data.chat import encode_prompt
from llama_rlhf.data.records import Preference, Prompt, SFTRecord
from llama_rlhf.data.truncate import fit_dialog, fit_pair, fit_prompt
from llama_rlhf.orchestrator.datasets import packed_batches, pair_batch, prompt_token_ids
from llama_rlhf.orchestrator.guards import NonFiniteError, check_metrics, check_tensor

B = 0


def test_prompt_policy_keeps_bos_first_exchange_and_latest_turns():
    ids = [B, 1, 2, 3, B, 4, 5, B, 6, 7, B, 8, 9]
    assert fit_prompt(ids, 10, B) == ([B, 1, 2, 3, B, 6, 7, B, 8, 9], True)
    assert fit_prompt(ids, 5, B) == ([B, 1, 2, 8, 9], True)  # head of the first, tail of the last
    assert fit_prompt([B] + list(range(1, 20)), 8, B) == ([B, 1, 2, 3, 16, 17, 18, 19], True)
    assert fit_prompt(ids, 13, B) == (ids, False)


def test_pair_policy_keeps_prompt_head_and_response_eos():
    ids, cut = fit_pair([B, 1, 2, 3, 4, 5], [10, 11, 12, 13, 99], 8, B)
    assert cut and ids == [B, 1, 4, 5, 10, 11, 12, 99]
    ids, cut = fit_pair([B, 1], list(range(10, 30)) + [99], 8, B)
    assert cut and ids[:2] == [B, 1] and ids[-1] == 99 and len(ids) == 8


def test_dialog_policy_keeps_mask_with_tokens():
    ids, mask = [B, 1, 2, 3, B, 4, 5, B, 6, 7], [0, 0, 1, 1, 0, 0, 1, 0, 0, 1]
    assert fit_dialog(ids, mask, 7, B) == ([B, 1, 2, 3, B, 6, 7], [0, 0, 1, 1, 0, 0, 1])
    assert fit_dialog(ids, mask, 3, B) is None


def _long_dialog(n_turns, system="Always answer in French."):
    msgs = [{"role": "system", "content": system}]
    for t in range(n_turns):
        msgs += [{"role": "user", "content": f"question number {t} " * 6},
                 {"role": "assistant", "content": f"answer number {t} " * 6}]
    return msgs


def test_counts_with_the_real_tokenizer(tiny_tokenizer):
    tok = tiny_tokenizer
    msgs = _long_dialog(6)
    full = encode_prompt(tok, msgs + [{"role": "user", "content": "last one"}])
    counts = Counter()
    ids = prompt_token_ids(tok, [Prompt("a", msgs + [{"role": "user", "content": "last one"}])], 60, counts)[0]
    assert len(full) > 60 >= len(ids) and counts["prompts_truncated"] == 1
    assert ids[0] == tok.bos_id and ids[:10] == full[:10] and ids[-7:] == full[-7:]  # BOS+system, latest turn
    prefs = [Preference([{"role": "user", "content": "q " * 200}], "good", "bad"),
             Preference([{"role": "user", "content": "short"}], "a", "b", chosen_safe=True, rejected_safe=False)]
    counts = Counter()
    pb = pair_batch(tok, prefs, 64, counts)
    assert counts == Counter(pairs_truncated=1, pairs_without_safety_labels=1)
    assert torch.isnan(pb.chosen_safe[0]) and pb.chosen_safe[1] == 1
    _, stats = packed_batches(tok, [SFTRecord(msgs)], 250, 1, seed=0)
    assert stats.num_turns_cut == 1 and stats.num_dropped == 0


def test_unlabelled_responses_are_masked_not_safe():
    r = torch.tensor([2.0, -3.0, 5.0])
    masked = safety_aux_loss(r, torch.tensor([1.0, float("nan"), float("nan")]))
    assert masked.item() == pytest.approx(safety_aux_loss(r[:1], torch.tensor([1.0])).item())
    assert safety_aux_loss(r, torch.full((3,), float("nan"))).item() == 0.0


def test_non_finite_stops_with_stage_step_quantity():
    with pytest.raises(NonFiniteError, match=r"^sft: step 7: loss is nan; stopped before saving"):
        check_metrics("sft", 7, {"loss": math.nan, "lr": 1e-5})
    with pytest.raises(NonFiniteError, match=r"^v2/rs: step 0: reward model score Rc has 1 of 4 values not finite"):
        check_tensor("v2/rs", 0, "reward model score Rc", torch.tensor([[1.0, float("nan")], [0.0, 2.0]]))
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match="reward"):
            RejectionArchive().add(1, "p", "q", "x", bad)


def test_counts_reach_metrics_and_report_and_guard_names_stage(tmp_path):
    from llama_rlhf.config import load_config, save_config
    from llama_rlhf.orchestrator.report import write_report
    from llama_rlhf.orchestrator.run_dir import RunDir
    from llama_rlhf.orchestrator.stages import Context, flush_truncation

    run = RunDir(tmp_path / "r")
    ctx = Context(load_config("configs/ci.yaml", ["logging.tensorboard=false"]), run, None, None, None)
    save_config(ctx.cfg, run.config_path)
    ctx.truncation.update(prompts_truncated=3, pairs_truncated=0)
    assert flush_truncation(ctx, "v1/rs") == {"truncated/prompts_truncated": 3} and not ctx.truncation
    assert run.metrics("v1/rs")[0]["truncated/prompts_truncated"] == 3
    assert "v1/rs: prompts_truncated 3" in open(write_report(run)).read()
    with pytest.raises(NonFiniteError, match=r"^v1/ppo: step 4: kl is inf"):
        ctx.guard("v1/ppo", 4, {"loss": 0.1, "kl": math.inf})
    fp16 = Context(load_config("configs/ci.yaml", ["model.dtype=float16"]), run, None, None, None)
    fp16.guard("sft", 0, {"loss": 0.1, "grad_norm": math.inf})  # a loss-scaler overflow step, skipped
