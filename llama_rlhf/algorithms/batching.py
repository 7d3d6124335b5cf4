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
    n, width = ids.shape[0], int(lengths.max())
    fit = FirstFit(n, width)
    place = {}  # input row -> (packed row, start column)
    used: dict[int, int] = {}
    for i in sorted(range(n), key=lambda k: (-int(lengths[k]), k)):
        r = fit.place(int(lengths[i]))
        place[i] = (r, used.get(r, 0))
        used[r] = used.get(r, 0) + int(lengths[i])
    rows = sorted(used)
    at = {r: j for j, r in enumerate(rows)}
    out_ids = torch.zeros(len(rows), width, dtype=ids.dtype, device=ids.device)
    seg = torch.zeros(len(rows), width, dtype=torch.long, device=ids.device)
    pos = torch.arange(width, device=ids.device).repeat(len(rows), 1)
    first = torch.empty(n, dtype=torch.long, device=ids.device)
    for i in range(n):
        r, start = at[place[i][0]], place[i][1]
        length = int(lengths[i])
        out_ids[r, start : start + length] = ids[i][mask[i].bool()]
        pos[r, start : start + length] = torch.arange(length, device=ids.device)
        seg[r, start : start + length] = i + 1
        first[i] = r * width + start
    for r in rows:  # the trailing padding: positions from 0, like any segment
        end = used[r]
        pos[at[r], end:] = torch.arange(width - end, device=ids.device)
    return {"input_ids": out_ids, "position_ids": pos, "segment_ids": seg, "start_index": first,
            "last_index": first + lengths - 1}


def response_state_index(packed: Mapping, mask: torch.Tensor, response_len: int) -> torch.Tensor:
    """(b, R) flat index, in `pack_rows`' packed tokens, of the state that predicts each response column's
    token of [left-padded prompt | right-padded response] rows (`mask` (b, P + R)): the state before the
    response's j-th token is the segment's (prompt length + j - 1)-th. Columns past a row's response
    point at its last token (any valid state: they are off the response mask)."""
    prompt_len = mask[:, : mask.shape[1] - response_len].long().sum(1)
    j = torch.arange(response_len, device=mask.device)
    idx = packed["start_index"][:, None] + prompt_len[:, None] - 1 + j
    return torch.minimum(idx, packed["last_index"][:, None])
