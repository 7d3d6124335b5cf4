"""Real preference-data formats, each turned into (prompt messages, chosen, rejected, extras):

  HH-RLHF       {"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": "..."}  (Anthropic)
  message lists {"chosen": [{role, content}, ...], "rejected": [...], "score_chosen"?, "score_rejected"?}
                (UltraFeedback-style; the rating level comes from the score gap)
  per-response  {"prompt", "response_0", "response_1", "better_response_id", "safer_response_id",
                 "is_response_0_safe", "is_response_1_safe"}  (PKU-SafeRLHF-style)

HH transcripts have quirks: consecutive turns of the same role (a turn split in two, or "Human:" written
inside a turn without its blank line) are merged; empty turns are kept as empty strings; a pair whose two
transcripts already differ before their last answers is cut at its first differing answer. Each is
counted in `quirks` (shown in the load report), none is dropped silently.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from llama_rlhf.data.chat import ChatFormatError, validate_messages
from llama_rlhf.data.records import RATINGS
from llama_rlhf.data.validate import DataError

EMPTY_KEPT = "empty turns kept"
"""The quirk counted for an empty turn a real transcript carries (kept, never silently dropped)."""


@dataclass(frozen=True)
class PreferenceOptions:
    is_safety: bool = False
    """`is_safety` of records that do not say (the source's default)."""
    safety_first: bool = False
    """Per-response records: chosen = the safer response (safety sources) instead of the better one."""
    gap_thresholds: tuple[float, float, float] = (3.0, 2.0, 1.0)
    """Score gap at or above which a pair is significantly better / better / slightly better."""


def rating_from_gap(gap: float, thresholds: tuple[float, float, float]) -> str:
    for level, t in zip(RATINGS, thresholds):
        if gap >= t:
            return level
    return RATINGS[-1]


_HH_TURN = re.compile(r"\n\n(Human|Assistant):")


def parse_hh_transcript(text: str, where: str, key: str, quirks: Counter | None = None) -> list[dict]:
    """`\\n\\nHuman: a\\n\\nAssistant: b ...` -> messages, quirks merged and counted."""
    quirks = quirks if quirks is not None else Counter()
    parts = _HH_TURN.split(text if text.startswith("\n\n") else "\n\n" + text)
    if len(parts) < 3 or parts[0].strip():
        raise DataError(f"{where}: field '{key}': not an HH transcript (\\n\\nHuman: ...\\n\\nAssistant: ...)")
    msgs: list[dict] = []
    for speaker, content in zip(parts[1::2], parts[2::2]):
        role, content = ("user" if speaker == "Human" else "assistant"), content.strip()
        if not content:
            quirks[EMPTY_KEPT] += 1
        if msgs and msgs[-1]["role"] == role:
            msgs[-1]["content"] = "\n\n".join(c for c in (msgs[-1]["content"], content) if c)
            quirks["same-role turns merged"] += 1
        else:
            msgs.append({"role": role, "content": content})
    try:
        validate_messages(msgs, need_last="assistant")
    except ChatFormatError as e:
        raise DataError(f"{where}: field '{key}': {e}") from None
    return msgs


def _split_pair(c: list[dict], r: list[dict], where: str, quirks: Counter) -> tuple[list[dict], str, str]:
    """Shared prompt and the two answers; cut at the first differing answer if they differ earlier."""
    if c[:-1] == r[:-1]:
        return c[:-1], c[-1]["content"], r[-1]["content"]
    k = next(i for i, (a, b) in enumerate(zip(c, r)) if a != b) if any(a != b for a, b in zip(c, r)) else None
    if k is None or c[k]["role"] != "assistant":
        raise DataError(f"{where}: field 'rejected': its dialog differs from 'chosen' at a user turn")
    quirks["pairs cut at their first differing answer"] += 1
    return c[:k], c[k]["content"], r[k]["content"]


def hh_pair(obj: dict, where: str, quirks: Counter) -> tuple[list[dict], str, str]:
    c = parse_hh_transcript(obj["chosen"], where, "chosen", quirks)
    r = parse_hh_transcript(obj["rejected"], where, "rejected", quirks)
    return _split_pair(c, r, where, quirks)


def message_list_pair(obj: dict, where: str, quirks: Counter) -> tuple[list[dict], str, str]:
    """`chosen` / `rejected` as whole dialogs (message lists) ending with the two answers."""
    dialogs = []
    for key in ("chosen", "rejected"):
        msgs = obj[key]
        try:
            validate_messages(msgs, need_last="assistant")
        except ChatFormatError as e:
            raise DataError(f"{where}: field '{key}': {e}") from None
        dialogs.append(msgs)
    return _split_pair(*dialogs, where, quirks)


def _number(obj: dict, key: str, where: str) -> float:
    v = obj.get(key)
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise DataError(f"{where}: field '{key}': must be a number, got {v!r}")
    return float(v)


def score_rating(obj: dict, where: str, thresholds: tuple[float, float, float]) -> str | None:
    """The rating level from `score_chosen - score_rejected`, or None when the record has no scores."""
    if "score_chosen" not in obj and "score_rejected" not in obj:
        return None
    gap = _number(obj, "score_chosen", where) - _number(obj, "score_rejected", where)
    if gap < 0:
        raise DataError(f"{where}: field 'score_chosen': lower than 'score_rejected' ({gap:+g})")
    return rating_from_gap(gap, thresholds)


def per_response_pair(obj: dict, where: str, safety_first: bool) -> tuple[str, str, bool | None, bool | None]:
    """(chosen, rejected, chosen_safe, rejected_safe) from two labelled responses."""
    key = "safer_response_id" if safety_first and "safer_response_id" in obj else "better_response_id"
    best = obj.get(key)
    if best not in (0, 1) or isinstance(best, bool):
        raise DataError(f"{where}: field '{key}': must be 0 or 1, got {best!r}")
    texts, safe = [], []
    for i in (0, 1):
        t = obj.get(f"response_{i}")
        if not isinstance(t, str):
            raise DataError(f"{where}: field 'response_{i}': must be str, got {type(t).__name__}")
        s = obj.get(f"is_response_{i}_safe")
        if s is not None and not isinstance(s, bool):
            raise DataError(f"{where}: field 'is_response_{i}_safe': must be true/false, got {s!r}")
        texts.append(t)
        safe.append(s)
    return texts[best], texts[1 - best], safe[best], safe[1 - best]
