"""Truncation policies for sequences longer than their budget, each counted by the caller.

A chat-format sequence is a run of exchanges, each starting with BOS (`<s>[INST] ...`); the system
prompt sits in the first. Cutting from the left (the old behaviour) removed BOS and the system prompt
first; these policies keep, in order of priority:

  prompt   BOS + the first exchange (system prompt) + the latest exchanges that fit; when even the first
           and the last do not fit, the head of the first and the tail of the last (the user's latest
           words and `[/INST]`), half the budget each.
  pair     (reward model) the response's head and its closing EOS; the prompt by the prompt policy with
           what is left, at least half the budget, so the prompt head is never cut away entirely.
  dialog   (SFT) the first exchange and the latest whole exchanges that fit (the loss mask travels with
           the tokens); None when even those two do not fit (packing then keeps the head and counts it).
"""

from __future__ import annotations


def _segments(ids: list[int], bos_id: int) -> list[list[int]]:
    out: list[list[int]] = []
    for i, t in enumerate(ids):
        if t == bos_id or i == 0:
            out.append([])
        out[-1].append(i)
    return out


def _keep_latest(segs: list[list[int]], budget: int) -> list[list[int]] | None:
    """The first segment plus the latest segments that fit in `budget` (None if not even the last)."""
    left = budget - len(segs[0])
    tail: list[list[int]] = []
    for seg in reversed(segs[1:]):
        if len(seg) > left:
            break
        tail.insert(0, seg)
        left -= len(seg)
    return [segs[0]] + tail if tail else None


def fit_prompt(ids: list[int], max_len: int, bos_id: int) -> tuple[list[int], bool]:
    """(ids within max_len, whether anything was cut) by the prompt policy."""
    if len(ids) <= max_len:
        return list(ids), False
    if max_len <= 1:
        return list(ids[:max_len]), True
    segs = _segments(ids, bos_id)
    if len(segs) > 1:
        kept = _keep_latest(segs, max_len)
        if kept is not None:
            return [ids[i] for s in kept for i in s], True
        first, last = [ids[i] for i in segs[0]], [ids[i] for i in segs[-1]]
        tail = min(len(last), max(max_len // 2, max_len - len(first)))
    else:
        first, last, tail = [], list(ids), max_len // 2
    head = (first + last)[: max_len - tail]
    return head + last[len(last) - tail:], True


def fit_pair(prompt: list[int], response: list[int], max_len: int, bos_id: int) -> tuple[list[int], bool]:
    """prompt + response within max_len by the pair policy; (ids, cut)."""
    if len(prompt) + len(response) <= max_len:
        return prompt + response, False
    keep_r = min(len(response), max_len - min(len(prompt), max_len // 2))
    if keep_r < len(response):
        response = response[: max(keep_r - 1, 0)] + response[-1:]
    p, _ = fit_prompt(prompt, max_len - len(response), bos_id)
    return p + response, True


def fit_dialog(ids: list[int], mask: list[int], max_len: int, bos_id: int):
    """(ids, mask) within max_len by the dialog policy, or None when it cannot (see module doc)."""
    if len(ids) <= max_len:
        return ids, mask
    segs = _segments(ids, bos_id)
    kept = _keep_latest(segs, max_len) if len(segs) > 1 else None
    if kept is None:
        return None
    idx = [i for s in kept for i in s]
    return [ids[i] for i in idx], [mask[i] for i in idx]
