"""SFT packing: hand-checked rows and tensors, invariants, and packed == unpacked loss on the tiny Llama."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llama_rlhf.algorithms.sft import sft_loss, sft_token_losses
from llama_rlhf.data.chat import encode_dialog
from llama_rlhf.data.packing import (
    block_causal_mask,
    collate_packed,
    cu_seqlens_from_position_ids,
    pack_samples,
)
from llama_rlhf.models import build_causal_lm, llama_config

SEP = 2


def test_pack_and_collate_hand_case():
    a = ([1, 5, 6, 2], [0, 0, 1, 1])  # already ends with the separator: nothing appended
    b = ([1, 7, 8], [0, 1, 1])  # separator appended with loss 0
    c = ([1, 9], [0, 1])
    rows, stats = pack_samples([a, b, c], seq_len=8, sep_id=SEP)
    assert [r.sample_indices for r in rows] == [[0, 1], [2]]
    assert [r.seq_lens for r in rows] == [[4, 4], [3]]
    assert rows[0].input_ids == [1, 5, 6, 2, 1, 7, 8, 2]
    assert rows[0].loss_mask == [0, 0, 1, 1, 0, 1, 1, 0]
    assert (stats.num_rows, stats.real_tokens, stats.pad_tokens, stats.answer_tokens) == (2, 11, 5, 5)
    assert stats.pad_fraction == pytest.approx(5 / 16)
    assert stats.efficiency == pytest.approx(11 / 16)

    batch = collate_packed(rows, seq_len=8, pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 5, 6, 2, 1, 7, 8, 2], [1, 9, 2, 0, 0, 0, 0, 0]]
    x = -100
    assert batch["labels"].tolist() == [[x, x, 6, 2, x, 7, 8, x], [x, 9, x, x, x, x, x, x]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2, 3], [0, 1, 2, 0, 1, 2, 3, 4]]
    assert batch["segment_ids"].tolist() == [[1, 1, 1, 1, 2, 2, 2, 2], [1, 1, 1, 0, 0, 0, 0, 0]]
    assert batch["cu_seqlens"].tolist() == [0, 4, 8, 11, 16]
    assert batch["cu_seqlens"].dtype == torch.int32
    assert batch["max_seqlen"] == 5
    mask = batch["attention_mask"]
    assert mask.shape == (2, 1, 8, 8) and mask.dtype == torch.float32
    allowed = mask[1, 0] == 0
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[:3, :3] = torch.ones(3, 3, dtype=torch.bool).tril()
    expected[3:, 3:] = torch.ones(5, 5, dtype=torch.bool).tril()
    assert torch.equal(allowed, expected)
    assert mask[1, 0, 4, 0] == torch.finfo(torch.float32).min


def test_first_fit_not_best_fit_and_sort_flag():
    s = lambda n: ([1] + [3] * (n - 2), [0] + [1] * (n - 2))
    rows, _ = pack_samples([s(4), s(6), s(2)], seq_len=8, sep_id=SEP, sort=False)
    # 4 -> row 0, 6 -> row 1, 2 -> the FIRST row with room (row 0), not the tightest (row 1)
    assert [r.sample_indices for r in rows] == [[0, 2], [1]]
    rows, _ = pack_samples([s(4), s(6), s(2)], seq_len=8, sep_id=SEP, sort=True)
    assert [r.sample_indices for r in rows] == [[1, 2], [0]]  # longest first: 6, 4, 2


def test_overflow_truncate_drop_error():
    long_answer = ([1, 3, 4, 5, 6], [0, 0, 1, 1, 1])
    prompt_only_fits = ([1, 3, 4, 5, 6], [0, 0, 0, 0, 1])  # truncation would cut every answer token
    rows, stats = pack_samples([long_answer, prompt_only_fits], seq_len=4, sep_id=SEP)
    assert [r.input_ids for r in rows] == [[1, 3, 4, 5]]
    assert rows[0].loss_mask == [0, 0, 1, 1]
    assert (stats.num_truncated, stats.num_dropped, stats.num_samples) == (1, 1, 2)
    rows, stats = pack_samples([long_answer], seq_len=4, sep_id=SEP, overflow="drop")
    assert rows == [] and stats.num_dropped == 1 and stats.pad_fraction == 0.0
    with pytest.raises(ValueError, match="seq_len 4"):
        pack_samples([long_answer], seq_len=4, sep_id=SEP, overflow="error")


def test_block_causal_mask_bool():
    seg = torch.tensor([[1, 1, 2]])
    assert block_causal_mask(seg).tolist() == [
        [[[True, False, False], [True, True, False], [False, False, True]]]
    ]


class CharTok:
    bos_id, eos_id = 1, 2

    def encode(self, text):
        return [3 + (ord(ch) % 60) for ch in text]


def test_packs_encoded_dialogs():
    tok = CharTok()
    d1 = encode_dialog(tok, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}])
    d2 = encode_dialog(tok, [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])
    rows, stats = pack_samples([d1, d2], seq_len=64, sep_id=tok.eos_id)
    assert len(rows) == 1 and rows[0].input_ids == d1.input_ids + d2.input_ids  # EOS already separates
    assert stats.answer_tokens == sum(d1.loss_mask) + sum(d2.loss_mask)


samples_st = st.lists(
    st.integers(1, 12).flatmap(
        lambda n: st.tuples(
            st.lists(st.integers(3, 9), min_size=n, max_size=n),
            st.lists(st.integers(0, 1), min_size=n, max_size=n),
        )
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=50, deadline=None)
@given(samples=samples_st, seq_len=st.integers(4, 16), sort=st.booleans())
def test_packing_invariants(samples, seq_len, sort):
    rows, stats = pack_samples(samples, seq_len, SEP, sort=sort)
    placed = sorted(i for r in rows for i in r.sample_indices)
    assert len(placed) == len(set(placed)) == stats.num_samples - stats.num_dropped
    for r in rows:
        assert len(r.input_ids) == sum(r.seq_lens) <= seq_len
        start = 0
        for i, n in zip(r.sample_indices, r.seq_lens):
            ids, mask = samples[i]
            full = (ids + [SEP])[:seq_len]
            assert r.input_ids[start : start + n] == full[:n]
            assert r.loss_mask[start : start + n] == (mask + [0])[:n]
            start += n
    assert 0.0 <= stats.pad_fraction < 1.0 or not rows
    if rows:
        batch = collate_packed(rows, seq_len)
        pos, seg = batch["position_ids"], batch["segment_ids"]
        new_segment = torch.ones_like(seg, dtype=torch.bool)
        new_segment[:, 1:] = seg[:, 1:] != seg[:, :-1]
        assert torch.equal(pos == 0, new_segment)  # positions restart exactly at segment starts
        assert (batch["labels"][new_segment] == -100).all()  # never predict across a boundary
        assert int(batch["cu_seqlens"][-1]) == len(rows) * seq_len
        assert torch.equal(cu_seqlens_from_position_ids(pos), batch["cu_seqlens"])


def _tiny_model(attn: str):
    cfg = llama_config("tiny", vocab_size=96, attn_implementation=attn)
    cfg.num_hidden_layers = 2
    return build_causal_lm(cfg, seed=0).eval()


@pytest.mark.parametrize(("attn", "mask_dtype"), [("sdpa", None), ("eager", torch.float32)])
def test_packed_loss_equals_unpacked(attn, mask_dtype):
    model = _tiny_model(attn)
    g = torch.Generator().manual_seed(0)
    samples = []
    for n in (9, 14, 5, 21, 11, 7):
        ids = [1] + torch.randint(3, 96, (n - 1,), generator=g).tolist()
        mask = [0] * (n // 2) + [1] * (n - n // 2)
        samples.append((ids, mask))
    rows, stats = pack_samples(samples, seq_len=32, sep_id=SEP)
    assert stats.num_rows < len(samples) and stats.pad_tokens > 0
    batch = collate_packed(rows, seq_len=32, mask_dtype=mask_dtype)
    with torch.no_grad():
        logits = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=batch["position_ids"],
        ).logits
        packed = sft_token_losses(logits, batch["labels"])  # (B, T-1)
        alone = []
        for ids, mask in samples:
            x = torch.tensor([ids])
            labels = torch.where(torch.tensor([mask]).bool(), x, -100)
            alone.append(sft_token_losses(model(input_ids=x).logits, labels)[0])
        # HF's own shifted CE on the packed batch is the same token mean
        hf = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=batch["position_ids"],
            labels=batch["labels"],
        ).loss
    # per sample: the packed per-token losses of its segment equal the losses of the sample run alone
    for row_i, row in enumerate(rows):
        start = 0
        for i, n in zip(row.sample_indices, row.seq_lens):
            k = len(samples[i][0]) - 1  # predicted positions of the sample alone
            torch.testing.assert_close(packed[row_i, start : start + k], alone[i], rtol=1e-5, atol=1e-5)
            start += n
    n_tokens = sum(int((torch.tensor(m[1:]) == 1).sum()) for _, m in samples)
    assert n_tokens == int((batch["labels"] != -100).sum())
    total_alone = torch.stack([a.sum() for a in alone]).sum()
    torch.testing.assert_close(packed.sum(), total_alone, rtol=1e-5, atol=1e-5)
    loss = sft_loss(logits, batch["labels"])
    torch.testing.assert_close(loss, total_alone / n_tokens, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss, hf, rtol=1e-5, atol=1e-5)
    # without the block-diagonal mask (plain causal over the row) samples would see each other
    with torch.no_grad():
        leaky = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
    assert not torch.allclose(sft_loss(leaky, batch["labels"]), loss, atol=1e-4)
