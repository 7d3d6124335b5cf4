"""Cutting a batch into micro-batches: the one split every training step and scoring pass uses."""

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


# --------------------------------------------------------------------------- padding that no row needs


def trim_padding(chunk: Mapping, response_key: str = "response_mask") -> tuple[dict, int]:
    """A chunk of [left-padded prompt | right-padded response] rows without the columns that are padding
    on every row: the prompt columns before the chunk's longest prompt and the response columns after its
    longest response. Returns (the trimmed chunk, its response width R' <= R).

    Exact, not an approximation: positions come from the attention mask (`response_position_ids`), a
    padded key is masked out of every query, and causal attention never lets a real token see the
    trailing padding. What it saves: a scoring batch is padded to its longest prompt plus its longest
    response, and each chunk of it carried that width (the demo's RS candidates: 39% of the positions
    were real tokens). Outputs over the response come back (b, R'); `pad_response` restores (b, R).

    `chunk` holds "input_ids" and "attention_mask" (b, P + R) and `response_key` (b, R); any other
    (b, R) tensor (old log-probs, advantages, values) is cut to R' with it, everything else is kept.
    """
    mask = chunk["attention_mask"]
    width, r = mask.shape[1], chunk[response_key].shape[1]
    p = width - r
    # at least one prompt column stays: the state before the first response token predicts it
    lead = min(_first_real_column(mask[:, :p], default=p), max(p - 1, 0))
    real_resp = chunk[response_key].bool().any(0).nonzero()
    keep = max(int(real_resp[-1]) + 1 if real_resp.numel() else 0, 1)
    if lead == 0 and keep == r:
        return dict(chunk), r
    out = {}
    for k, v in chunk.items():
        if k in ("input_ids", "attention_mask"):
            out[k] = v[:, lead : p + keep]
        elif isinstance(v, torch.Tensor) and v.dim() == 2 and v.shape[1] == r:
            out[k] = v[:, :keep]
        else:
            out[k] = v
    return out, keep


def pad_response(x: torch.Tensor, width: int) -> torch.Tensor:
    """(b, R') response values back to (b, `width`), zeros where `trim_padding` cut (off the mask)."""
    return torch.nn.functional.pad(x, (0, width - x.shape[1])) if x.shape[1] < width else x


def _first_real_column(mask: torch.Tensor, default: int) -> int:
    """The first column where some row of `mask` (b, T) is 1; `default` when none is."""
    real = mask.bool().any(0)
    return int(real.to(torch.int8).argmax()) if bool(real.any()) else default


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
    more segment of its own) of (B', W), and last_index (n,): each input row's last real token in the
    flattened (B' * W) packed tokens, in input row order.
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
    last = torch.empty(n, dtype=torch.long, device=ids.device)
    for i in range(n):
        r, start = at[place[i][0]], place[i][1]
        length = int(lengths[i])
        out_ids[r, start : start + length] = ids[i][mask[i].bool()]
        pos[r, start : start + length] = torch.arange(length, device=ids.device)
        seg[r, start : start + length] = i + 1
        last[i] = r * width + start + length - 1
    for r in rows:  # the trailing padding: positions from 0, like any segment
        end = used[r]
        pos[at[r], end:] = torch.arange(width - end, device=ids.device)
    return {"input_ids": out_ids, "position_ids": pos, "segment_ids": seg, "last_index": last}
