"""SFT sample packing (paper section 3.1): "concatenate all the prompts and answers from the training
set" into fixed-length rows, "a special token to separate the prompt and answer segments", loss only on
answer tokens.

Each sample is one encoded dialog (`llama_rlhf.data.chat.encode_dialog`): token ids and a loss mask (1 on
answer tokens). Packing rules, all explicit:

* a sample is closed by the separator id: one separator is appended (loss 0) unless the sample already
  ends with it (the chat encoding ends every answer with EOS, the default separator, which stays trained);
* rows are filled first-fit: each sample goes to the first row with room, a new row opens otherwise;
  `sort=True` places samples longest first (first-fit decreasing, fuller rows), ties in input order;
* a sample longer than `seq_len` is, by `overflow`: "truncate" (keep its first `seq_len` tokens and
  drop the separator, it fills a row on its own; dropped if no answer token survives), "drop", or
  "error";
* attention never crosses samples: `collate_packed` gives position ids restarting at 0 per sample, a
  4D block-diagonal causal mask (the HF reference path) and flat `cu_seqlens` (the varlen kernels);
  padding at the end of a row is one more segment of its own, so no query row is fully masked.

Packing efficiency is reported as `PackingStats.pad_fraction` (pad tokens / all row tokens).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

IGNORE_INDEX = -100
Overflow = Literal["truncate", "drop", "error"]


@dataclass(frozen=True)
class PackedRow:
    input_ids: list[int]
    loss_mask: list[int]
    seq_lens: list[int]
    """Length of each sample segment in the row, in order; sum(seq_lens) = len(input_ids) <= seq_len."""
    sample_indices: list[int]
    """Index of each segment's sample in the packed input."""


@dataclass(frozen=True)
class PackingStats:
    seq_len: int
    num_samples: int
    num_rows: int
    num_truncated: int
    num_dropped: int
    real_tokens: int
    answer_tokens: int
    """Tokens trained on (loss mask 1, not the first token of a segment)."""
    num_turns_cut: int = 0
    """Samples shortened by dropping middle exchanges before packing (`data.truncate.fit_dialog`)."""

    @property
    def pad_tokens(self) -> int:
        return self.num_rows * self.seq_len - self.real_tokens

    @property
    def pad_fraction(self) -> float:
        """Fraction of row tokens that are padding (0 = perfectly packed)."""
        total = self.num_rows * self.seq_len
        return self.pad_tokens / total if total else 0.0

    @property
    def efficiency(self) -> float:
        return 1.0 - self.pad_fraction


def _as_pair(sample) -> tuple[list[int], list[int]]:
    if hasattr(sample, "input_ids"):
        ids, mask = sample.input_ids, sample.loss_mask
    else:
        ids, mask = sample
    ids, mask = list(ids), list(mask)
    if len(ids) != len(mask):
        raise ValueError(f"sample: {len(ids)} input ids but {len(mask)} loss-mask entries")
    if not ids:
        raise ValueError("sample: empty")
    return ids, mask


class FirstFit:
    """Leftmost row with at least L free tokens in O(log n): a max segment tree over row capacities.

    Leaves are all the rows that could ever open (one per sample); unopened rows hold the full capacity,
    so the first unopened row is found by the same query that finds a partly filled one.
    """

    def __init__(self, n: int, capacity: int):
        self.size = 1
        while self.size < max(n, 1):
            self.size *= 2
        self.tree = [-1] * (2 * self.size)
        for i in range(n):
            self.tree[self.size + i] = capacity
        for node in range(self.size - 1, 0, -1):
            self.tree[node] = max(self.tree[2 * node], self.tree[2 * node + 1])

    def place(self, length: int) -> int:
        node = 1
        while node < self.size:
            node = 2 * node if self.tree[2 * node] >= length else 2 * node + 1
        self.tree[node] -= length
        row = node - self.size
        node //= 2
        while node:
            self.tree[node] = max(self.tree[2 * node], self.tree[2 * node + 1])
            node //= 2
        return row


def pack_samples(
    samples: Iterable,
    seq_len: int,
    sep_id: int,
    overflow: Overflow = "truncate",
    sort: bool = True,
) -> tuple[list[PackedRow], PackingStats]:
    """Pack (input_ids, loss_mask) samples into rows of at most `seq_len` tokens (rules in the module doc).

    Returns the rows (unpadded; `collate_packed` pads) and the packing statistics.
    """
    if seq_len <= 0:
        raise ValueError(f"seq_len: must be > 0, got {seq_len}")
    kept: list[tuple[int, list[int], list[int]]] = []
    n_in = n_trunc = n_drop = 0
    for i, sample in enumerate(samples):
        n_in += 1
        ids, mask = _as_pair(sample)
        if ids[-1] != sep_id:
            ids, mask = ids + [sep_id], mask + [0]
        if len(ids) > seq_len:
            if overflow == "error":
                raise ValueError(f"sample {i}: {len(ids)} tokens (with separator) > seq_len {seq_len}")
            if overflow == "drop":
                n_drop += 1
                continue
            if overflow != "truncate":
                raise ValueError(f"overflow: must be truncate, drop or error, got {overflow!r}")
            ids, mask = ids[:seq_len], mask[:seq_len]
            if not any(mask[1:]):  # the first token of a segment is never a target
                n_drop += 1
                continue
            n_trunc += 1
        kept.append((i, ids, mask))
    order = sorted(range(len(kept)), key=lambda k: -len(kept[k][1])) if sort else range(len(kept))
    fit = FirstFit(len(kept), seq_len)
    rows: dict[int, tuple[list[int], list[int], list[int], list[int]]] = {}
    for k in order:
        i, ids, mask = kept[k]
        r = fit.place(len(ids))
        row = rows.setdefault(r, ([], [], [], []))
        row[0].extend(ids)
        row[1].extend(mask)
        row[2].append(len(ids))
        row[3].append(i)
    packed = [PackedRow(*rows[r]) for r in sorted(rows)]
    stats = PackingStats(
        seq_len=seq_len,
        num_samples=n_in,
        num_rows=len(packed),
        num_truncated=n_trunc,
        num_dropped=n_drop,
        real_tokens=sum(len(r.input_ids) for r in packed),
        answer_tokens=sum(sum(mask[1:]) for _, _, mask in kept),
    )
    return packed, stats


def block_causal_mask(segment_ids: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """(B, T) segment ids -> (B, 1, T, T) mask: query i sees key j iff same segment and j <= i.

    `dtype=None` gives a bool mask (True = attend, what SDPA takes); a float dtype gives the additive
    mask (0 or finfo.min) that HF eager attention adds to the scores. transformers 5.19 passes any 4D
    `attention_mask` through unchanged (`masking_utils._preprocess_mask_arguments`), so this is the
    whole mask: causality included.
    """
    t = segment_ids.size(1)
    same = segment_ids[:, :, None] == segment_ids[:, None, :]  # (B, T, T)
    causal = torch.ones(t, t, dtype=torch.bool, device=segment_ids.device).tril()
    allowed = (same & causal).unsqueeze(1)  # (B, 1, T, T)
    if dtype is None:
        return allowed
    zero = torch.zeros((), dtype=dtype, device=segment_ids.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)


def cu_seqlens_from_position_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """Flat varlen boundaries of (B, T) restarting position ids: a segment starts wherever the position
    is 0 (every row starts one), as HF's flash-attention path reads packed rows. (S + 1,) int32."""
    starts = torch.nonzero(position_ids.reshape(-1) == 0).squeeze(-1)
    total = torch.tensor([position_ids.numel()], device=position_ids.device)
    return torch.cat([starts, total]).to(torch.int32)


def collate_packed(
    rows: Sequence[PackedRow],
    seq_len: int,
    pad_id: int = 0,
    mask_dtype: torch.dtype | None = torch.float32,
    with_mask: bool = True,
) -> dict[str, torch.Tensor | int]:
    """Tensors of packed rows, each right-padded to `seq_len`.

    input_ids, labels (-100 off the loss mask and on each segment's first token: it has no context
    inside its sample), position_ids (restart at 0 per segment), segment_ids (1.. per sample, 0 = pad):
    all (B, T). attention_mask: the (B, 1, T, T) block-diagonal causal mask of `block_causal_mask` in
    `mask_dtype`: the model's float dtype (additive, works for HF eager and SDPA) or None (bool, SDPA
    only); skip it with `with_mask=False` (O(B T^2) memory: the reference path only). cu_seqlens (S + 1,)
    int32 and max_seqlen: the flash varlen description of the flattened (B * T) tokens, every row's
    padding counted as one segment.
    """
    b = len(rows)
    input_ids = torch.full((b, seq_len), pad_id, dtype=torch.long)
    labels = torch.full((b, seq_len), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((b, seq_len), dtype=torch.long)
    segment_ids = torch.zeros((b, seq_len), dtype=torch.long)
    lengths: list[int] = []
    for r, row in enumerate(rows):
        n = len(row.input_ids)
        if n > seq_len or sum(row.seq_lens) != n:
            raise ValueError(f"row {r}: {n} tokens, segments {row.seq_lens}, seq_len {seq_len}")
        ids = torch.tensor(row.input_ids, dtype=torch.long)
        on = torch.tensor(row.loss_mask, dtype=torch.bool)
        input_ids[r, :n] = ids
        labels[r, :n] = torch.where(on, ids, IGNORE_INDEX)
        start = 0
        for s, length in enumerate(row.seq_lens):
            position_ids[r, start : start + length] = torch.arange(length)
            segment_ids[r, start : start + length] = s + 1
            labels[r, start] = IGNORE_INDEX
            start += length
        position_ids[r, n:] = torch.arange(seq_len - n)
        lengths += list(row.seq_lens) + ([seq_len - n] if n < seq_len else [])
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor(lengths, dtype=torch.int32).cumsum(0)
    batch: dict[str, torch.Tensor | int] = {
        "input_ids": input_ids,
        "labels": labels,
        "position_ids": position_ids,
        "segment_ids": segment_ids,
        "cu_seqlens": cu,
        "max_seqlen": max(lengths) if lengths else 0,
    }
    if with_mask:
        batch["attention_mask"] = block_causal_mask(segment_ids, mask_dtype)
    return batch
