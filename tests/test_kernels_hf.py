"""A tiny HF Llama on attn_implementation="llama_rlhf_gqa" against the same model on "sdpa".

The Triton kernels run under the CPU interpreter (TRITON_INTERPRET=1); one test unsets it to cover
the CPU SDPA path the adapter takes in production. Run: pytest tests/test_kernels_hf.py
"""

import os

# Before triton is first imported (transformers imports it; conftest.py does the same).
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from llama_rlhf import kernels
from llama_rlhf.kernels.gqa_triton import is_interpreted

pytestmark = pytest.mark.skipif(
    not is_interpreted(), reason="triton was imported before TRITON_INTERPRET=1 was set"
)

# fp32 everywhere; measured differences are ~1e-7 (logits) and ~1e-7 (grads).
ATOL, RTOL = 1e-5, 1e-4
LOSS_TOL = 1e-4  # max |loss_gqa - loss_sdpa| over the 20 training steps
CONFIGS = {
    "mqa_hd16": {"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 1},
    "gqa_hd32": {"hidden_size": 64, "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 32},
}


@pytest.fixture(autouse=True)
def _interpret(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def _pair(shape: str) -> tuple[LlamaForCausalLM, LlamaForCausalLM]:
    """The same random weights on sdpa and on llama_rlhf_gqa."""
    name = kernels.register()
    cfg = {
        "vocab_size": 128,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "max_position_embeddings": 128,
    }
    cfg.update(CONFIGS[shape])
    torch.manual_seed(0)
    sdpa = LlamaForCausalLM(LlamaConfig(**cfg, attn_implementation="sdpa"))
    ours = LlamaForCausalLM(LlamaConfig(**cfg, attn_implementation=name))
    ours.load_state_dict(sdpa.state_dict())
    return sdpa, ours


def _batch(padding: str | None, b=2, t=24):
    ids = torch.randint(0, 128, (b, t), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    if padding == "right":
        mask[1, 15:] = 0
    elif padding == "left":
        mask[1, :9] = 0
    return ids, mask


def test_register_is_idempotent():
    assert kernels.register() == kernels.register() == "llama_rlhf_gqa"


@pytest.mark.parametrize("shape", list(CONFIGS))
@pytest.mark.parametrize("padding", [None, "right"])
def test_logits_and_grads_match_sdpa(shape, padding):
    models = _pair(shape)
    ids, mask = _batch(padding)
    labels = ids.masked_fill(mask == 0, -100)
    outs = []
    for m in models:
        out = m(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False)
        out.loss.backward()
        outs.append(out)
    keep = mask.bool()  # pad positions are zeros on our side, garbage on SDPA's: compare real tokens
    torch.testing.assert_close(outs[1].logits[keep], outs[0].logits[keep], atol=ATOL, rtol=RTOL)
    for (name, p_sdpa), p_ours in zip(models[0].named_parameters(), models[1].parameters()):
        torch.testing.assert_close(p_ours.grad, p_sdpa.grad, atol=ATOL, rtol=RTOL, msg=name)


def test_left_padded_scoring_and_greedy_generation_match_sdpa():
    sdpa, ours = _pair("gqa_hd32")
    ids, mask = _batch("left")
    with torch.no_grad():
        want, got = (m(input_ids=ids, attention_mask=mask).logits for m in (sdpa, ours))
    torch.testing.assert_close(got[mask.bool()], want[mask.bool()], atol=ATOL, rtol=RTOL)
    # Decode steps run the varlen kernel with 1 query over each row's unpadded cache.
    gen = [
        m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False)
        for m in (sdpa, ours)
    ]
    assert torch.equal(gen[0], gen[1])


def test_packed_position_ids_keep_samples_apart():
    sdpa, ours = _pair("gqa_hd32")
    ids, _ = _batch(None, b=1)
    pos = torch.cat([torch.arange(10), torch.arange(7), torch.arange(7)])[None]  # 3 samples in one row
    with torch.no_grad():
        want = sdpa(input_ids=ids, position_ids=pos, use_cache=False).logits
        got = ours(input_ids=ids, position_ids=pos, use_cache=False).logits
        alone = ours(input_ids=ids[:, 10:17], use_cache=False).logits
        cu = torch.tensor([0, 10, 17, 24], dtype=torch.int32)  # flash-attn style kwargs, as given
        varlen = ours(input_ids=ids, position_ids=pos, use_cache=False, cu_seq_lens_q=cu, cu_seq_lens_k=cu,
                      max_length_q=10, max_length_k=10).logits  # fmt: skip
    torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(got[:, 10:17], alone, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(varlen, got, atol=ATOL, rtol=RTOL)


def test_packed_role_passes_on_the_kernel_match_padded_passes_on_sdpa():
    """What the roles run on a GPU: rows packed by `pack_rows` through our kernel (segments from the
    restarting position ids, no mask) against the same rows padded on sdpa. Response log-probs of the
    causal LM and their gradients, and scores of the scalar head."""
    from transformers import LlamaForSequenceClassification

    from llama_rlhf.algorithms.batching import pack_rows, response_state_index
    from llama_rlhf.passes import RolePasses

    sdpa, ours = _pair("gqa_hd32")
    g = torch.Generator().manual_seed(3)
    p_width, r_width = 10, 8
    ids = torch.randint(1, 128, (5, p_width + r_width), generator=g)
    mask = torch.zeros_like(ids)
    for i, (pl, rl) in enumerate([(10, 8), (3, 2), (6, 0), (1, 5), (8, 7)]):
        mask[i, p_width - pl : p_width + rl] = 1
    ids = ids * mask
    on = mask[:, p_width:].bool()
    packed = pack_rows(ids, mask)
    inputs = {k: packed[k] for k in ("input_ids", "position_ids", "segment_ids")}
    want = RolePasses(sdpa)(ids, mask, out="response_logprobs", response_len=r_width)[0]
    got = RolePasses(ours)(**inputs, out="response_logprobs", labels=ids[:, p_width:],
                           state_index=response_state_index(packed, mask, r_width))[0]
    torch.testing.assert_close(got[on], want[on], atol=ATOL, rtol=RTOL)
    grads = [torch.autograd.grad(x[on].sum(), list(m.parameters())) for x, m in ((want, sdpa), (got, ours))]
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, atol=ATOL, rtol=RTOL)

    def scalar(attn: str):
        torch.manual_seed(4)
        cfg = {k: v for k, v in sdpa.config.to_dict().items() if k not in ("id2label", "label2id")}
        return LlamaForSequenceClassification(LlamaConfig(**cfg, num_labels=1, attn_implementation=attn))

    scalar_sdpa, scalar_ours = scalar("sdpa"), scalar(ours.config._attn_implementation)
    assert scalar_ours.config._attn_implementation == "llama_rlhf_gqa"
    scalar_ours.load_state_dict(scalar_sdpa.state_dict())
    with torch.no_grad():
        want = RolePasses(scalar_sdpa)(ids, mask, out="scores")
        got = RolePasses(scalar_ours)(**inputs, out="scores", last_index=packed["last_index"])
    torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL)


def test_cpu_fallback_without_interpreter_matches_sdpa(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    sdpa, ours = _pair("gqa_hd32")
    ids, mask = _batch("left")
    pos = torch.cat([torch.arange(10), torch.arange(14)])[None].expand(2, -1)
    with torch.no_grad():
        for kw in ({"attention_mask": mask}, {"position_ids": pos}, {}):
            want, got = (m(input_ids=ids, use_cache=False, **kw).logits for m in (sdpa, ours))
            keep = kw.get("attention_mask", torch.ones_like(ids)).bool()
            torch.testing.assert_close(got[keep], want[keep], atol=ATOL, rtol=RTOL)


def test_ready_made_4d_mask_falls_back_to_sdpa():
    sdpa, ours = _pair("mqa_hd16")
    ids, _ = _batch(None)
    mask = torch.ones(24, 24, dtype=torch.bool).tril()
    mask[12:, :12] = False  # two causal blocks
    mask = mask[None, None].expand(2, 1, -1, -1)
    with torch.no_grad():
        want, got = (m(input_ids=ids, attention_mask=mask, use_cache=False).logits for m in (sdpa, ours))
    torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL)


def _train(model: LlamaForCausalLM, steps: int = 20) -> list[float]:
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ids = torch.randint(0, 128, (2, 32), generator=torch.Generator().manual_seed(2))  # memorized
    losses = []
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_twenty_training_steps_follow_the_sdpa_loss_curve():
    sdpa, ours = _pair("mqa_hd16")
    want, got = _train(sdpa), _train(ours)
    assert want[-1] < want[0] - 0.1  # it does learn
    assert max(abs(a - b) for a, b in zip(got, want)) < LOSS_TOL, (got, want)
