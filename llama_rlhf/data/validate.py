"""Record checks the field parsers leave out: what parses but cannot train anything.

A preference pair with an empty or identical chosen/rejected answer teaches the reward model nothing
(or noise); a blank turn in a dialog encodes to an empty segment; a prompt `meta` that is not a mapping
breaks the gold judge hours later. Each is a `DataError` naming `where` and the field, raised by the
loaders before any training (with `skip_invalid` it is counted and reported like any bad record).
"""

from __future__ import annotations

from collections.abc import Mapping


class DataError(ValueError):
    """A malformed record: the message starts with `where: field: problem`."""


def check_raw(obj: dict, where: str) -> None:
    """Checks on the raw JSON object, before the field parsers see it."""
    meta = obj.get("meta")
    if meta is not None and not isinstance(meta, Mapping):
        raise DataError(f"{where}: field 'meta': must be an object (mapping), got {type(meta).__name__}")
    for key in ("id", "kind"):
        v = obj.get(key)
        if v is not None and not isinstance(v, str | int):
            raise DataError(f"{where}: field '{key}': must be a string or integer, got {type(v).__name__}")


def _blank_turn(messages) -> int | None:
    for i, m in enumerate(messages):
        if not m["content"].strip():
            return i
    return None


def check_record(rec, where: str, blank_ok: bool = False) -> None:
    """Checks on a parsed record (SFTRecord, Preference or Prompt). `blank_ok`: the record's format
    keeps empty turns as a counted quirk (HH-RLHF transcripts), so they are not refused."""
    i = None if blank_ok else _blank_turn(rec.messages)
    if i is not None:
        raise DataError(f"{where}: field 'messages': messages[{i}].content: empty or blank")
    chosen, rejected = getattr(rec, "chosen", None), getattr(rec, "rejected", None)
    if chosen is None:
        return
    for key, text in (("chosen", chosen), ("rejected", rejected)):
        if not text.strip() and not blank_ok:
            raise DataError(f"{where}: field '{key}': empty or blank answer")
    if chosen.strip() == rejected.strip():
        raise DataError(f"{where}: field 'rejected': identical to 'chosen' (the pair carries no preference)")
