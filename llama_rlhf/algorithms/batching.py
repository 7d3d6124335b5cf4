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


def trim_left(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded rows (b, T) without the leading columns that are padding on every row."""
    lead = _first_real_column(mask, default=0)
    return ids[:, lead:], mask[:, lead:]


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
