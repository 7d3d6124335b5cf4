"""The small typed batches that travel from the orchestrator to the actors (pickled by Ray).

Layouts
  PackedBatch    packed SFT / rejection-sampling rows (B, T) from `data.packing.collate_packed`
  SequenceBatch  prompt+response rows: [left-padded prompt | right-padded response] (B, P + R);
                 `response_mask` (B, R) is 1 on generated tokens (their closing EOS included)
  PPOBatch       a SequenceBatch plus the per-token rollout quantities (B, R)
  PairBatch      preference pairs: chosen rows then rejected rows, each (B, T) left padded
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch


def _split_rows(n: int, parts: int) -> list[tuple[int, int]]:
    if parts > n:
        raise ValueError(f"cannot shard {n} rows over {parts} ranks")
    bounds = [round(i * n / parts) for i in range(parts + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


class _Rows:
    """Row slicing shared by the batch types: every tensor field is (B, ...)."""

    def rows(self) -> int:
        tensors = (getattr(self, f.name) for f in fields(self))
        return next(t for t in tensors if isinstance(t, torch.Tensor)).shape[0]

    def select(self, a: int, b: int):
        return self.take(slice(a, b))

    def take(self, idx: torch.Tensor | slice):
        """The rows `idx` (an index tensor: any order, repeats allowed; or a slice)."""
        return replace(self, **{f.name: getattr(self, f.name)[idx] for f in fields(self)
                                if isinstance(getattr(self, f.name), torch.Tensor)})

    def shard(self, parts: int) -> list:
        """Split the rows over data-parallel ranks (contiguous, sizes differ by at most one)."""
        return [self.select(a, b) for a, b in _split_rows(self.rows(), parts)]

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class PackedBatch(_Rows):
    input_ids: torch.Tensor  # (B, T)
    labels: torch.Tensor  # (B, T), -100 off the answer tokens
    position_ids: torch.Tensor  # (B, T), restart per packed sample
    segment_ids: torch.Tensor  # (B, T), 1.. per sample, 0 = pad

    @classmethod
    def from_collated(cls, c: dict) -> PackedBatch:
        return cls(c["input_ids"], c["labels"], c["position_ids"], c["segment_ids"])


@dataclass
class SequenceBatch(_Rows):
    input_ids: torch.Tensor  # (B, P + R)
    attention_mask: torch.Tensor  # (B, P + R)
    response_mask: torch.Tensor  # (B, R)

    @property
    def response_len(self) -> int:
        return self.response_mask.shape[1]


@dataclass
class PPOBatch(_Rows):
    input_ids: torch.Tensor  # (B, P + R)
    attention_mask: torch.Tensor  # (B, P + R)
    response_mask: torch.Tensor  # (B, R)
    old_logprobs: torch.Tensor  # (B, R)
    advantages: torch.Tensor  # (B, R), whitened
    old_values: torch.Tensor  # (B, R)
    returns: torch.Tensor  # (B, R)

    @property
    def response_len(self) -> int:
        return self.response_mask.shape[1]

    def sequences(self) -> SequenceBatch:
        return SequenceBatch(self.input_ids, self.attention_mask, self.response_mask)


@dataclass
class PairBatch(_Rows):
    chosen_ids: torch.Tensor  # (B, T)
    chosen_mask: torch.Tensor  # (B, T)
    rejected_ids: torch.Tensor  # (B, T)
    rejected_mask: torch.Tensor  # (B, T)
    rating: torch.Tensor  # (B,) index into RATINGS
    chosen_safe: torch.Tensor  # (B,) 1 = safe response (safety RM auxiliary loss)
    rejected_safe: torch.Tensor  # (B,)


def left_pad(seqs: list[list[int]], pad_id: int, length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists to one length: (ids, attention_mask), both (B, L)."""
    length = length or max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for i, s in enumerate(seqs):
        s = s[-length:]
        if s:
            ids[i, length - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, length - len(s):] = 1
    return ids, mask


def right_pad(seqs: list[list[int]], pad_id: int, length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    length = length or max(1, max(len(s) for s in seqs))
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for i, s in enumerate(seqs):
        s = s[:length]
        if s:
            ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, : len(s)] = 1
    return ids, mask


def sequence_batch(prompts: list[list[int]], responses: list[list[int]], pad_id: int) -> SequenceBatch:
    """[left-padded prompt | right-padded response] rows, the layout every scorer reads."""
    p_ids, p_mask = left_pad(prompts, pad_id)
    r_ids, r_mask = right_pad(responses, pad_id)
    return SequenceBatch(torch.cat([p_ids, r_ids], 1), torch.cat([p_mask, r_mask], 1), r_mask)
