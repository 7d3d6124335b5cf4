"""Cutting a batch into micro-batches (the one split every training step and scoring pass uses), dealing
rows of similar length to the same chunk, and packing a chunk's rows so no pass computes on padding."""

from __future__ import annotations

from collections.abc import Mapping

import torch


def num_micro(rows: int, micro_batch_size: int) -> int:
    """Micro-batches of at most `micro_batch_size` rows covering `rows` rows (at least one)."""
    return max(1, -(-rows // micro_batch_size))


def micro_batches(batch: Mapping, num: int) -> list[dict]:
    """Every (B, ...) tensor of `batch` cut into `num` consecutive chunks whose sizes differ by at most one
    row; other values are passed to every chunk."""
    n = next(v for v in batch.values() if isinstance(v, torch.Tensor)).shape[0]
    if num > n:
        raise ValueError(f"cannot split {n} rows into {num} micro-batches")
    bounds = [round(i * n / num) for i in range(num + 1)]
    return [{k: v[a:b] if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            for a, b in zip(bounds[:-1], bounds[1:])]


# --------------------------------------------------------------------------- rows of similar length together


def length_balanced_order(lengths: torch.Tensor, parts: int) -> torch.Tensor:
    """A row order for scoring: rows sorted by length (stable), then dealt round-robin to `parts`
    contiguous shards (the data-parallel ranks). Each rank's row chunks then hold rows of similar length,
    so `trim_padding` cuts most of the padding, and chunk k has about the same width on every rank
    (ZeRO-3 forwards are collective: a rank with longer rows would hold the others back). The caller
    scores `rows[order]` and puts result i back at `order[i]`."""
    by_len = torch.sort(lengths, stable=True).indices
    return torch.cat([by_len[k::parts] for k in range(parts)])


# --------------------------------------------------------------------------- packing rows for one score each


def pack_rows(ids: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Rows padded in any layout (left-padded pairs, [prompt | response] rows) packed into as few rows as
    first-fit decreasing allows, for passes that read one state per row (reward scores).

    Each row's real tokens (in order: `mask` 1) become one segment with positions 0..n-1, exactly the
    positions the padded row gets (`response_position_ids`), so with attention kept inside segments
    (`passes.packed_attention`) every state is the padded row's. The width is the longest row's length:
    it packs alone and shorter rows fill the gaps. What it saves: a training micro-batch of preference
    pairs is padded to its longest sequence, and half of the demo's RM positions were padding.

    Returns input_ids, position_ids, segment_ids (1.. per row, 0 on the trailing padding, which is one
    more segment of its own) of (B', W), and start_index, last_index (n,): each input row's first and
    last real token in the flattened (B' * W) packed tokens, in input row order.
    """
    from llama_rlhf.data.packing import FirstFit

    lengths = mask.long().sum(1)
    if bool((lengths == 0).any()):
        raise ValueError(f"pack_rows: row {int((lengths == 0).nonzero()[0])} has no real token")
    n, dev = ids.shape[0], ids.device
    sizes = lengths.tolist()
    width = max(sizes)
    # placement on the host (plain ints): first-fit opens rows left to right, so rows are 0..B'-1
    fit = FirstFit(n, width)
    start = [0] * n
    used: list[int] = []
    for i in sorted(range(n), key=lambda k: (-sizes[k], k)):
        r = fit.place(sizes[i])
        if r == len(used):
            used.append(0)
        start[i] = r * width + used[r]
        used[r] += sizes[i]
    first = torch.tensor(start, dtype=torch.long, device=dev)
    # every real token, row by row in order, to its flat packed position: a few whole-tensor ops
    offset = torch.arange(int(lengths.sum()), device=dev) - torch.repeat_interleave(lengths.cumsum(0) - lengths,
                                                                                     lengths)  # within its row
    dest = torch.repeat_interleave(first, lengths) + offset
    fill = torch.tensor(used, dtype=torch.long, device=dev)
    col = torch.arange(width, device=dev)
    tail = (col[None, :] - fill[:, None]).clamp(min=0)  # the trailing padding: positions from 0, like any segment
    out = {"input_ids": torch.zeros(len(used), width, dtype=ids.dtype, device=dev),
           "position_ids": tail.reshape(-1),
           "segment_ids": torch.zeros(len(used) * width, dtype=torch.long, device=dev)}
    out["input_ids"].view(-1)[dest] = ids[mask.bool()]
    out["position_ids"][dest] = offset
    out["segment_ids"][dest] = torch.repeat_interleave(torch.arange(1, n + 1, device=dev), lengths)
    out["position_ids"] = out["position_ids"].view(len(used), width)
    out["segment_ids"] = out["segment_ids"].view(len(used), width)
    return {**out, "start_index": first, "last_index": first + lengths - 1}


def response_state_index(packed: Mapping, mask: torch.Tensor, response_len: int) -> torch.Tensor:
    """(b, R) flat index, in `pack_rows`' packed tokens, of the state that predicts each response column's
    token of [left-padded prompt | right-padded response] rows (`mask` (b, P + R)): the state before the
    response's j-th token is the segment's (prompt length + j - 1)-th. Columns past a row's response
    point at its last token (any valid state: they are off the response mask)."""
    prompt_len = mask[:, : mask.shape[1] - response_len].long().sum(1)
    j = torch.arange(response_len, device=mask.device)
    idx = packed["start_index"][:, None] + prompt_len[:, None] - 1 + j
    return torch.minimum(idx, packed["last_index"][:, None])
