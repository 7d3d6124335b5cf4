"""Micro-batching and chunking change how a step is computed, never what: every training step (SFT, RM,
PPO policy, critic) accumulated over micro-batches gives the one-batch loss and gradients, every scoring
pass in row chunks gives the one-batch result, and the chunked log-probs (no (B, T, V) tensor) equal
the full computation, on real DeepSpeed ZeRO-3 (world size 1, gloo, in this process) and, for the
log-probs, plain transformers as the reference.

Tolerances (fp32 everywhere; only the summation order differs): losses and scores 1e-6 absolute,
gradients max |a - b| <= 1e-5 * max |b| + 1e-7 per tensor.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))

import pytest  # noqa: E402
import torch  # noqa: E402

from llama_rlhf.algorithms.logprobs import chunked_token_logprobs, entropy_from_logits, token_logprobs  # noqa: E402

LOSS_TOL = 1e-6
GRAD_RTOL, GRAD_ATOL = 1e-5, 1e-7
MAX_LEN = 96


def _close_grads(a: dict, b: dict) -> float:
    """The worst |a - b| / max|b| over the tensors; asserts the tolerance on each."""
    assert a.keys() == b.keys() and a
    worst = 0.0
    for n in b:
        err, scale = float((a[n] - b[n]).abs().max()), float(b[n].abs().max())
        assert err <= GRAD_RTOL * scale + GRAD_ATOL, (n, err, scale)
        worst = max(worst, err / max(scale, 1e-30))
    return worst


# --------------------------------------------------------------------------- pure: chunked log-probs


@pytest.mark.parametrize("chunk_tokens", [1, 7, 64, 10_000])
def test_chunked_logprobs_equal_full_values_and_gradients(chunk_tokens):
    g = torch.Generator().manual_seed(chunk_tokens)
    b, t, h, v = 3, 21, 16, 97
    hidden = torch.randn(b, t, h, generator=g, requires_grad=True)
    head = torch.nn.Linear(h, v, bias=False)
    labels = torch.randint(0, v, (b, t), generator=g)
    labels[0, :4] = -100  # ignored positions give 0
    full = token_logprobs(head(hidden), labels, 0.7)
    ours, ent = chunked_token_logprobs(hidden, head, labels, 0.7, with_entropy=True, chunk_tokens=chunk_tokens)
    torch.testing.assert_close(ours, full, rtol=0, atol=1e-6)
    torch.testing.assert_close(ent, entropy_from_logits(head(hidden), 0.7), rtol=0, atol=1e-5)
    g_full = torch.autograd.grad(full.sum(), [hidden, head.weight])
    g_ours = torch.autograd.grad(ours.sum(), [hidden, head.weight])
    _close_grads(dict(enumerate(g_ours)), dict(enumerate(g_full)))


# --------------------------------------------------------------------------- DeepSpeed ZeRO-3, world size 1

slow = pytest.mark.slow  # DeepSpeed engines (a few seconds each, ~2 minutes for the module on 2 cores)


@pytest.fixture(scope="module")
def dist_env():
    """One gloo rank in this process; the environment it sets (RANK, MASTER_PORT, ...) is put back."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="module")
def setup(tiny_tokenizer, tmp_path_factory, dist_env):
    """A tiny Llama saved as an HF folder (causal and scalar), and real encoded data from the world."""
    from llama_rlhf.actors.batches import PPOBatch, sequence_batch
    from llama_rlhf.data.chat import encode_response
    from llama_rlhf.data.records import Preference
    from llama_rlhf.data.world import build_world
    from llama_rlhf.models import build_causal_lm, llama_config, save_hf, scalar_from_causal_lm
    from llama_rlhf.orchestrator.datasets import packed_batches, pair_batch, prompt_token_ids

    tok = tiny_tokenizer
    cfg = llama_config("tiny", vocab_size=tok.vocab_size, max_seq_len=MAX_LEN, pad_token_id=tok.pad_id,
                       bos_token_id=tok.bos_id, eos_token_id=tok.eos_id)
    lm = build_causal_lm(cfg, seed=0)
    root = tmp_path_factory.mktemp("mb")
    causal = str(save_hf(lm, root / "causal"))
    scalar = str(save_hf(scalar_from_causal_lm(lm, seed=1), root / "scalar"))
    world = build_world(seed=0, n_sft=24, n_preferences=8, n_rlhf=12, n_eval=4)
    sft = world.sft_records()
    packed = packed_batches(tok, sft, MAX_LEN, 6, seed=0)[0][0]
    prompts = prompt_token_ids(tok, world.rlhf_prompts()[:6], MAX_LEN - 24)
    answers = [encode_response(tok, r.messages[-1]["content"])[:20] for r in sft[:6]]
    seq = sequence_batch(prompts, answers, tok.pad_id)
    g = torch.Generator().manual_seed(0)
    mask = seq.response_mask.float()
    rnd = lambda: torch.randn(mask.shape, generator=g) * mask  # noqa: E731
    ppo = PPOBatch(seq.input_ids, seq.attention_mask, seq.response_mask, rnd() - 3.0, rnd(), rnd(), rnd())
    prefs = [Preference(p.messages, s.messages[-1]["content"], t.messages[-1]["content"], "better",
                        chosen_safe=True, rejected_safe=False)
             for p, s, t in zip(world.rlhf_prompts()[:6], sft[:6], sft[6:12])]
    pairs = pair_batch(tok, prefs, MAX_LEN)
    return {"causal": causal, "scalar": scalar, "packed": packed, "seq": seq, "ppo": ppo, "pairs": pairs}


def _role(cls, kind: str, path: str, optim: bool = True):
    from llama_rlhf.actors.engine import DistSpec, ModelSpec, OptimSpec, ZeroSpec

    role = cls(DistSpec(0, 1), ZeroSpec(stage=3, param_persistence_threshold=0))
    role.load(ModelSpec(kind, path=path, seed=3), OptimSpec(lr=1e-3, schedule="constant") if optim else None)
    return role


def _grads_at_first_step(m) -> dict:
    """Wrap the engine's step: the full fp32 gradients at the first accumulation boundary, before the
    optimizer consumes them (DeepSpeed's own `safe_get_full_grad`)."""
    from deepspeed.utils import safe_get_full_grad

    grads, real = {}, m.engine.step

    def step(*args, **kwargs):
        if m.engine.is_gradient_accumulation_boundary() and not grads:
            grads.update({n: safe_get_full_grad(p).detach().clone() for n, p in m.module.named_parameters()})
        return real(*args, **kwargs)

    m.engine.step = step
    return grads


def _step_both_ways(cls, kind, path, run):
    """(one-batch result, grads), (micro-batched result, grads) of `run(role, micro)` on fresh engines."""
    out = []
    for micro in (False, True):
        role = _role(cls, kind, path)
        grads = _grads_at_first_step(role.m)
        out.append((run(role, micro), grads))
        role.unload()
    return out


@slow
def test_sft_step_micro_batched_equals_one_batch(setup):
    from llama_rlhf.actors.policy import PolicyTrainer

    batch = setup["packed"]
    (one, g1), (many, g3) = _step_both_ways(PolicyTrainer, "causal", setup["causal"],
                                            lambda r, micro: r.sft_step(batch, 3 if micro else 1))
    worst = _close_grads(g3, g1)
    print(f"\n[microbatch] SFT {tuple(batch.input_ids.shape)}: loss {one['loss']:.6f} vs 3 micro "
          f"{many['loss']:.6f}; worst relative grad diff {worst:.1e}")
    assert abs(one["loss"] - many["loss"]) < LOSS_TOL and one["tokens"] == many["tokens"]


@slow
def test_sft_loss_and_gradients_are_the_reference_answer_only_loss(setup):
    """The chunked packed log-probs through ZeRO-3 give `algorithms.sft.sft_loss` (F.cross_entropy) on the
    full logits of plain transformers, and its gradients (the one-batch DeepSpeed step, before AdamW)."""
    from transformers import LlamaForCausalLM

    from llama_rlhf.actors.policy import PolicyTrainer
    from llama_rlhf.algorithms.sft import sft_loss
    from llama_rlhf.passes import packed_forward

    batch = setup["packed"]
    hf = LlamaForCausalLM.from_pretrained(setup["causal"], dtype=torch.float32, attn_implementation="sdpa")
    loss = sft_loss(packed_forward(hf, batch.to_dict()), batch.labels)
    loss.backward()
    want = {n: p.grad for n, p in hf.named_parameters()}
    role = _role(PolicyTrainer, "causal", setup["causal"])
    grads = _grads_at_first_step(role.m)
    for chunks in (1, 2):
        got = role.sft_eval(batch, chunks)
        assert abs(got["loss_sum"] / got["tokens"] - float(loss)) < LOSS_TOL
    step = role.sft_step(batch, 2)
    role.unload()
    worst = _close_grads(grads, want)
    print(f"\n[microbatch] SFT vs transformers + sft_loss: loss {step['loss']:.6f} vs {float(loss):.6f}; "
          f"worst relative grad diff {worst:.1e}")
    assert abs(step["loss"] - float(loss)) < LOSS_TOL


@slow
def test_ppo_and_critic_steps_micro_batched_equal_one_batch(setup):
    from llama_rlhf.actors.policy import PolicyTrainer
    from llama_rlhf.actors.scalar import CriticTrainer

    batch = setup["ppo"]
    rows = batch.rows()
    (one, g1), (many, g3) = _step_both_ways(
        PolicyTrainer, "causal", setup["causal"],
        lambda r, micro: r.ppo_step(batch, rows, 0.2, seed=0, micro_batch_size=2 if micro else None))
    worst = _close_grads(g3, g1)
    for k in ("loss", "policy/clipfrac", "policy/approx_kl", "policy/entropy"):
        assert abs(one[k] - many[k]) < LOSS_TOL, k
    (c1, h1), (c3, h3) = _step_both_ways(
        CriticTrainer, "scalar", setup["scalar"],
        lambda r, micro: r.value_step(batch, rows, 0.2, seed=0, micro_batch_size=2 if micro else None))
    worst_c = _close_grads(h3, h1)
    print(f"\n[microbatch] PPO {rows} rows in 3 micro-batches: policy loss {one['loss']:.6f} vs "
          f"{many['loss']:.6f} (grads {worst:.1e}); critic {c1['loss']:.6f} vs {c3['loss']:.6f} (grads {worst_c:.1e})")
    assert abs(c1["loss"] - c3["loss"]) < LOSS_TOL


@slow
def test_reward_model_step_micro_batched_equals_one_batch(setup):
    from llama_rlhf.actors.scalar import RewardModelTrainer

    pairs = setup["pairs"]
    (one, g1), (many, g3) = _step_both_ways(
        RewardModelTrainer, "scalar", setup["scalar"],
        lambda r, micro: r.train_step(pairs, "small", aux_safety_weight=0.5, num_micro=3 if micro else 1))
    worst = _close_grads(g3, g1)
    print(f"\n[microbatch] RM {pairs.rows()} pairs: loss {one['loss']:.6f} vs 3 micro {many['loss']:.6f}; "
          f"grads {worst:.1e}")
    assert abs(one["loss"] - many["loss"]) < LOSS_TOL and one["accuracy"] == many["accuracy"]


@slow
def test_scoring_passes_in_chunks_equal_one_batch_and_transformers(setup):
    """Policy/reference log-probs, critic values, RM scores and pair scores: 1 chunk vs 4 chunks; the
    log-probs and RM scores also against plain transformers."""
    from transformers import LlamaForCausalLM, LlamaForSequenceClassification

    from llama_rlhf.actors.policy import ReferencePolicy
    from llama_rlhf.actors.scalar import CriticTrainer, RewardModelTrainer
    from llama_rlhf.algorithms.logprobs import causal_lm_response_logprobs
    from llama_rlhf.passes import RolePasses

    seq, pairs = setup["seq"], setup["pairs"]
    ref = _role(ReferencePolicy, "causal", setup["causal"], optim=False)
    a, b = ref.logprobs(seq, 1), ref.logprobs(seq, 4)
    ref.unload()
    hf = LlamaForCausalLM.from_pretrained(setup["causal"], dtype=torch.float32, attn_implementation="sdpa").eval()
    with torch.no_grad():
        full, _ = causal_lm_response_logprobs(hf, seq.input_ids, seq.attention_mask, seq.response_len)
    full = full * seq.response_mask
    assert torch.allclose(a, b, atol=LOSS_TOL) and torch.allclose(a, full, atol=1e-5)

    critic = _role(CriticTrainer, "scalar", setup["scalar"], optim=False)
    assert torch.allclose(critic.values(seq, 1), critic.values(seq, 4), atol=LOSS_TOL)
    critic.unload()
    rm = _role(RewardModelTrainer, "scalar", setup["scalar"], optim=False)
    s1 = rm.score(seq, 1)
    assert torch.allclose(s1, rm.score(seq, 4), atol=LOSS_TOL)
    (c1, r1), (c4, r4) = rm.pair_scores(pairs, 1), rm.pair_scores(pairs, 3)
    assert torch.allclose(c1, c4, atol=LOSS_TOL) and torch.allclose(r1, r4, atol=LOSS_TOL)
    rm.unload()
    # RM scores run packed (`pack_rows`); the reference reads the padded rows' last real token
    hf = LlamaForSequenceClassification.from_pretrained(setup["scalar"], dtype=torch.float32,
                                                        attn_implementation="sdpa").eval()
    with torch.no_grad():
        want = torch.sigmoid(RolePasses(hf)(seq.input_ids, seq.attention_mask, out="scores"))
    assert torch.allclose(s1, want, atol=1e-5)
    print(f"\n[microbatch] scoring: reference log-probs vs transformers max diff {float((a - full).abs().max()):.1e}, "
          f"RM scores {float((s1 - want).abs().max()):.1e}")


@slow
def test_critic_and_reward_gradients_are_the_reference(setup):
    """The critic's clipped value loss and the RM's ranking loss through ZeRO-3 give the gradients of the same
    losses on plain transformers (`LlamaForSequenceClassification`'s body and head, the algorithms' losses)."""
    from transformers import LlamaForSequenceClassification

    from llama_rlhf.actors.scalar import CriticTrainer, RewardModelTrainer
    from llama_rlhf.algorithms.logprobs import response_position_ids
    from llama_rlhf.algorithms.ppo import value_loss
    from llama_rlhf.algorithms.reward import reward_model_loss

    batch, pairs = setup["ppo"], setup["pairs"]

    def hf_model():
        return LlamaForSequenceClassification.from_pretrained(setup["scalar"], dtype=torch.float32,
                                                              attn_implementation="sdpa")

    hf = hf_model()
    am = batch.attention_mask
    hidden = hf.model(input_ids=batch.input_ids, attention_mask=am,
                      position_ids=response_position_ids(am)).last_hidden_state
    values = hf.score(hidden[:, -batch.response_len - 1 : -1]).squeeze(-1)
    loss, _ = value_loss(values, batch.old_values, batch.returns, batch.response_mask.float(), 0.2)
    loss.backward()
    want = {n: p.grad for n, p in hf.named_parameters()}
    critic = _role(CriticTrainer, "scalar", setup["scalar"])
    grads = _grads_at_first_step(critic.m)
    got = critic.value_step(batch, batch.rows(), 0.2, seed=0, micro_batch_size=2)
    critic.unload()
    worst_c = _close_grads(grads, want)
    assert abs(got["loss"] - float(loss)) < LOSS_TOL

    hf = hf_model()
    from llama_rlhf.actors.scalar import _stack_pairs

    ids, mask = _stack_pairs(pairs.to_dict())
    out = hf(input_ids=ids, attention_mask=mask, position_ids=response_position_ids(mask)).logits.squeeze(-1)
    b = pairs.rows()
    loss = reward_model_loss(out[:b], out[b:], pairs.rating, "small", pairs.chosen_safe, pairs.rejected_safe, 0.5)
    loss.backward()
    want = {n: p.grad for n, p in hf.named_parameters()}
    rm = _role(RewardModelTrainer, "scalar", setup["scalar"])
    grads = _grads_at_first_step(rm.m)
    got = rm.train_step(pairs, "small", aux_safety_weight=0.5, num_micro=2)
    rm.unload()
    worst_r = _close_grads(grads, want)
    print(f"\n[microbatch] vs transformers: critic grads {worst_c:.1e}, RM loss {got['loss']:.6f} vs "
          f"{float(loss):.6f}, grads {worst_r:.1e}")
    assert abs(got["loss"] - float(loss)) < LOSS_TOL


@slow
def test_streamed_export_in_shards_reloads_partitioned_and_in_transformers(setup, tmp_path):
    """The HF export streams: rank 0 holds one shard at a time (the cost: `peak_shard_bytes`, at most the
    shard size unless one tensor is larger); the sharded folder loads in stock transformers with the same
    tensors, and back into a partitioned engine with the same log-probs."""
    from safetensors.torch import load_file
    from transformers import LlamaForCausalLM

    from llama_rlhf.actors.policy import ReferencePolicy

    shard = 2 * 2**20
    role = _role(ReferencePolicy, "causal", setup["causal"], optim=False)
    role.m.save_hf(tmp_path / "sharded", shard_bytes=shard)
    cost = role.m.last_export
    before = role.logprobs(setup["seq"], 2)
    role.unload()
    assert cost["shards"] > 1 and cost["peak_shard_bytes"] <= shard
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    want = load_file(str(Path(setup["causal"]) / "model.safetensors"))
    got = LlamaForCausalLM.from_pretrained(tmp_path / "sharded", dtype=torch.float32).state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    again = _role(ReferencePolicy, "causal", str(tmp_path / "sharded"), optim=False)
    after = again.logprobs(setup["seq"], 2)
    again.unload()
    print(f"\n[microbatch] export: {cost['shards']} shards, rank 0 held at most {cost['peak_shard_bytes'] / 2**20:.2f} "
          f"MiB of {cost['bytes'] / 2**20:.1f} MiB")
    assert torch.equal(before, after)


# --------------------------------------------------------------------------- pure: rows by length, packed rows


def test_length_balanced_order_sorts_and_deals_rows_to_ranks():
    from llama_rlhf.algorithms.batching import length_balanced_order

    lengths = torch.tensor([50, 3, 40, 4, 30, 5, 20, 6])
    order = length_balanced_order(lengths, 2)
    assert sorted(order.tolist()) == list(range(8))
    shards = lengths[order].view(2, 4)  # contiguous shards, one per rank
    assert shards.tolist() == [[3, 5, 20, 40], [4, 6, 30, 50]]
    back = torch.empty_like(lengths)
    back[order] = lengths[order]
    assert torch.equal(back, lengths)


def test_pack_rows_keeps_each_rows_tokens_positions_and_last_token():
    from llama_rlhf.algorithms.batching import pack_rows

    # left-padded, [prompt | response] with a hole, and full rows of lengths 5, 3, 2, 4, 1
    ids = torch.tensor([[0, 11, 12, 13, 14, 15], [0, 0, 21, 0, 22, 23], [0, 0, 0, 0, 31, 32],
                        [41, 42, 0, 43, 44, 0], [0, 0, 0, 0, 0, 51]])
    mask = (ids != 0).long()
    p = pack_rows(ids, mask)
    assert p["input_ids"].shape == (3, 5)  # width = the longest row; 15 tokens in 3 rows of 5
    flat_ids, flat_seg, flat_pos = (p[k].reshape(-1) for k in ("input_ids", "segment_ids", "position_ids"))
    for i in range(ids.shape[0]):
        on = flat_seg == i + 1
        assert flat_ids[on].tolist() == ids[i][mask[i].bool()].tolist()
        assert flat_pos[on].tolist() == list(range(int(mask[i].sum())))
        assert int(p["last_index"][i]) == int(on.nonzero()[-1])
    assert int((flat_seg == 0).sum()) == 0  # 5 + (4 + 1) + (3 + 2): no padding left
    g = torch.Generator().manual_seed(0)
    for _ in range(20):  # random layouts: every row's tokens, positions and last token, nothing else
        mask = (torch.rand(int(torch.randint(1, 40, (1,), generator=g)), 30, generator=g) < 0.5).long()
        mask[:, -1] = 1
        ids = torch.randint(1, 99, mask.shape, generator=g) * mask
        p = pack_rows(ids, mask)
        seg, width = p["segment_ids"].reshape(-1), p["input_ids"].shape[1]
        assert width == int(mask.sum(1).max()) and int((seg > 0).sum()) == int(mask.sum())
        for i in torch.randperm(ids.shape[0], generator=g)[:5].tolist():
            on = seg == i + 1
            assert p["input_ids"].reshape(-1)[on].tolist() == ids[i][mask[i].bool()].tolist()
            assert p["position_ids"].reshape(-1)[on].tolist() == list(range(int(mask[i].sum())))
            assert int(p["last_index"][i]) == int(on.nonzero()[-1]) and int(p["start_index"][i]) == int(on.nonzero()[0])
        pad = p["position_ids"][p["segment_ids"] == 0]  # each row's tail restarts at 0
        assert pad.numel() == 0 or int(pad.min()) == 0
    with pytest.raises(ValueError, match="row 1 has no real token"):
        pack_rows(ids[:2], torch.tensor([[1] * 6, [0] * 6]))


@pytest.mark.parametrize("head", ["scalar", "causal"])
def test_packed_passes_equal_padded_passes_values_and_gradients(head):
    """Every per-row pass on packed rows (`pack_rows`, attention kept in segments) against the same pass on
    the padded rows, on one plain transformers model: RM scores and critic values (scalar head), response
    log-probs and entropies (LM head); outputs on the response mask and parameter gradients."""
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    from llama_rlhf.algorithms.batching import pack_rows, response_state_index
    from llama_rlhf.passes import RolePasses

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, num_labels=1, pad_token_id=0)
    cfg._attn_implementation = "sdpa"
    model = RolePasses((LlamaForSequenceClassification if head == "scalar" else LlamaForCausalLM)(cfg).eval())
    g = torch.Generator().manual_seed(1)
    prompt_lens, response_lens, p_width, r_width = [9, 2, 5, 1, 8, 3, 6, 4], [7, 0, 3, 8, 1, 5, 2, 6], 9, 8
    n = len(prompt_lens)
    ids = torch.zeros(n, p_width + r_width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, (pl, rl) in enumerate(zip(prompt_lens, response_lens)):  # [left-padded prompt | right-padded response]
        cols = list(range(p_width - pl, p_width + rl))
        ids[i, cols] = torch.randint(1, 64, (pl + rl,), generator=g)
        mask[i, cols] = 1
    on = mask[:, p_width:].float()
    p = pack_rows(ids, mask)
    packed_in = {k: p[k] for k in ("input_ids", "position_ids", "segment_ids")}
    kw = {"state_index": response_state_index(p, mask, r_width), "labels": ids[:, p_width:]}
    if head == "scalar":
        passes = {"scores": (lambda: model(ids, mask, out="scores"),
                             lambda: model(**packed_in, out="scores", last_index=p["last_index"]), 1.0),
                  "values": (lambda: model(ids, mask, out="values", response_len=r_width),
                             lambda: model(**packed_in, out="values", **kw), on)}
    else:
        def logp(packed):
            a = model(**packed_in, out="response_logprobs", with_entropy=True, **kw) if packed else \
                model(ids, mask, out="response_logprobs", response_len=r_width, with_entropy=True)
            return a[0] + a[1]  # both outputs, and gradients through both
        passes = {"response_logprobs": (lambda: logp(False), lambda: logp(True), on)}
    for name, (padded_fn, packed_fn, keep) in passes.items():
        padded, packed = padded_fn() * keep, packed_fn() * keep
        torch.testing.assert_close(packed, padded, rtol=0, atol=1e-5, msg=name)
        grads = [torch.autograd.grad(y.square().sum(), list(model.parameters())) for y in (padded, packed)]
        _close_grads(dict(enumerate(grads[1])), dict(enumerate(grads[0])))
    assert p["input_ids"].shape == (6, 16)  # 70 real tokens: 96 positions packed against 136 padded
