"""Loaders for SFT demonstrations, preference pairs and prompts, from JSONL files or HF `datasets`.

Sources: a `.jsonl` path, a folder written by `datasets.Dataset.save_to_disk`, or `hf:<name>[:split]`
(a hub dataset; needs network). A bad record is an error naming `file:line` (or `dataset[split] row i`)
and the field; nothing is skipped silently: with `skip_invalid=True` bad records are counted and
reported in the returned `LoadReport`.

Accepted shapes
  SFT:        {"messages": [...ending with assistant]} | {"prompt", "response"|"completion", "system"?}
  preference: {"prompt"|"messages", "chosen", "rejected", "rating"?, "is_safety"?, "chosen_safe"?,
               "rejected_safe"?}, or one of the real formats of llama_rlhf.data.formats: HH-RLHF transcripts,
              UltraFeedback-style message lists with scores, PKU-SafeRLHF-style per-response labels
              (rating: given, else from the score gap, else "negligibly_better", i.e. margin 0)
  prompt:     {"prompt"|"messages", "is_safety"?, "id"?}
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from llama_rlhf.data.chat import ChatFormatError, validate_messages
from llama_rlhf.data.formats import (
    EMPTY_KEPT,
    PreferenceOptions,
    hh_pair,
    message_list_pair,
    parse_hh_transcript,
    per_response_pair,
    score_rating,
)
from llama_rlhf.data.records import Preference, Prompt, SFTRecord, normalize_rating
from llama_rlhf.data.validate import DataError, check_raw, check_record

__all__ = ["DataError", "LoadReport", "PreferenceOptions", "load_preferences", "load_prompts", "load_sft",
           "parse_hh_transcript", "rows", "write_jsonl"]


@dataclass
class LoadReport:
    source: str
    loaded: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)
    quirks: Counter = field(default_factory=Counter)
    """Format quirks repaired while loading (HH-RLHF: same-role turns merged, empty turns kept, ...)."""

    def __str__(self) -> str:
        s = f"{self.source}: {self.loaded} records"
        if self.quirks:
            s += " (" + ", ".join(f"{n} {q}" for q, n in sorted(self.quirks.items())) + ")"
        if self.skipped:
            s += f", {self.skipped} invalid skipped (first: {self.errors[0]})"
        return s


# --------------------------------------------------------------------------- raw rows


def _jsonl_rows(path: Path) -> Iterator[tuple[str, object]]:
    with path.open("rb") as f:  # decoded per line, so a bad byte is named by its line
        for n, raw in enumerate(f, 1):
            where = f"{path}:{n}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield where, DataError(f"{where}: not UTF-8: byte {raw[e.start]:#04x} at column {e.start + 1}")
                continue
            if not line.strip():
                continue
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as e:
                yield where, DataError(f"{where}: invalid JSON: {e.msg} at column {e.colno}")


def _dataset_rows(source: str) -> Iterator[tuple[str, object]]:
    import datasets

    if source.startswith("hf:"):
        name, _, split = source[3:].partition(":")
        ds = datasets.load_dataset(name, split=split or "train")
        label = f"{name}[{split or 'train'}]"
    else:
        ds = datasets.load_from_disk(source)
        if isinstance(ds, datasets.DatasetDict):
            ds = ds["train"]
        label = source
    for i, row in enumerate(ds):
        yield f"{label} row {i}", dict(row)


def rows(source: str | Path) -> Iterator[tuple[str, object]]:
    s = str(source)
    p = Path(s)
    if s.startswith("hf:") or p.is_dir():
        yield from _dataset_rows(s)
    elif p.is_file():
        yield from _jsonl_rows(p)
    else:
        raise FileNotFoundError(f"{s}: no such file, folder or hf: dataset")


# --------------------------------------------------------------------------- field parsers


def _need(obj: dict, key: str, where: str, kind: type | tuple = str):
    if key not in obj:
        raise DataError(f"{where}: field '{key}': missing")
    v = obj[key]
    if not isinstance(v, kind):
        want = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise DataError(f"{where}: field '{key}': must be {want}, got {type(v).__name__}")
    return v


def _bool(obj: dict, key: str, where: str, default: bool = False) -> bool:
    v = obj.get(key, default)
    if not isinstance(v, bool):
        raise DataError(f"{where}: field '{key}': must be true/false, got {v!r}")
    return v


def _prompt_messages(obj: dict, where: str, last: str = "user") -> list[dict]:
    if "messages" in obj:
        msgs = _need(obj, "messages", where, list)
        try:
            validate_messages(msgs, need_last=last)
        except ChatFormatError as e:
            raise DataError(f"{where}: field 'messages': {e}") from None
        return msgs
    prompt = _need(obj, "prompt", where)
    if not prompt.strip():
        raise DataError(f"{where}: field 'prompt': empty")
    msgs = [{"role": "user", "content": prompt}]
    if obj.get("system"):
        msgs.insert(0, {"role": "system", "content": _need(obj, "system", where)})
    return msgs


def parse_sft(obj: dict, where: str) -> SFTRecord:
    if "messages" in obj:
        return SFTRecord(_prompt_messages(obj, where, last="assistant"))
    msgs = _prompt_messages(obj, where)
    key = next((k for k in ("response", "completion", "answer") if k in obj), "response")
    response = _need(obj, key, where)
    if not response.strip():
        raise DataError(f"{where}: field '{key}': empty")
    return SFTRecord(msgs + [{"role": "assistant", "content": response}])


def parse_preference(obj: dict, where: str, opts: PreferenceOptions | None = None,
                     quirks: Counter | None = None) -> Preference:
    opts = opts or PreferenceOptions()
    quirks = quirks if quirks is not None else Counter()
    chosen_safe, rejected_safe = (_opt_bool(obj, k, where) for k in ("chosen_safe", "rejected_safe"))
    if "response_0" in obj or "response_1" in obj:
        msgs = _prompt_messages(obj, where)
        chosen, rejected, chosen_safe, rejected_safe = per_response_pair(obj, where, opts.safety_first)
    else:
        chosen = _need(obj, "chosen", where, (str, list))
        rejected = _need(obj, "rejected", where, type(chosen))
        if isinstance(chosen, list):
            msgs, chosen, rejected = message_list_pair(obj, where, quirks)
        elif "prompt" in obj or "messages" in obj:
            msgs = _prompt_messages(obj, where)
        else:  # HH-style: two full transcripts sharing everything but the last answer
            msgs, chosen, rejected = hh_pair(obj, where, quirks)
    try:
        rating = obj.get("rating") or score_rating(obj, where, opts.gap_thresholds) or "negligibly_better"
        rating = normalize_rating(rating)
    except ValueError as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{where}: field 'rating': {e}") from None
    return Preference(msgs, chosen, rejected, rating, _bool(obj, "is_safety", where, opts.is_safety),
                      chosen_safe, rejected_safe)


def _opt_bool(obj: dict, key: str, where: str) -> bool | None:
    return None if obj.get(key) is None else _bool(obj, key, where)


def parse_prompt(obj: dict, where: str) -> Prompt:
    msgs = _prompt_messages(obj, where)
    pid = obj.get("id", where)
    return Prompt(str(pid), msgs, _bool(obj, "is_safety", where), str(obj.get("kind", "")), dict(obj.get("meta") or {}))


# --------------------------------------------------------------------------- public loaders


def load_records(source, parse: Callable[..., object], skip_invalid: bool = False, **kw):
    """`parse(obj, where, **kw)` per row; a parser taking `quirks` counts them into the report."""
    out, report = [], LoadReport(str(source))
    for where, obj in rows(source):
        try:
            if isinstance(obj, Exception):
                raise obj
            if not isinstance(obj, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
            check_raw(obj, where)
            quirks = kw.get("quirks")
            empty_before = quirks[EMPTY_KEPT] if quirks is not None else 0
            rec = parse(obj, where, **kw)
            # an empty turn of a real transcript (HH-RLHF) is kept and counted as a quirk, not refused
            check_record(rec, where, blank_ok=quirks is not None and quirks[EMPTY_KEPT] > empty_before)
            out.append(rec)
        except (DataError, TypeError, KeyError, AttributeError) as e:
            # a parser gap (not a DataError) is still one line naming the record
            err = e if isinstance(e, DataError) else DataError(f"{where}: {type(e).__name__}: {e}")
            if not skip_invalid:
                raise err from None
            report.skipped += 1
            report.errors.append(str(err))
    report.loaded = len(out)
    if not out:
        raise DataError(f"{source}: no valid records" + (f" ({report.skipped} invalid)" if report.skipped else ""))
    return out, report


def load_sft(source, skip_invalid: bool = False) -> tuple[list[SFTRecord], LoadReport]:
    return load_records(source, parse_sft, skip_invalid)


def load_preferences(
    source, skip_invalid: bool = False, opts: PreferenceOptions | None = None
) -> tuple[list[Preference], LoadReport]:
    quirks = Counter()
    prefs, report = load_records(source, parse_preference, skip_invalid, opts=opts, quirks=quirks)
    report.quirks = quirks
    return prefs, report


def load_prompts(source, skip_invalid: bool = False) -> tuple[list[Prompt], LoadReport]:
    return load_records(source, parse_prompt, skip_invalid)


def write_jsonl(path: str | Path, records) -> Path:
    """One JSON object per line (records' `to_dict()` where they have one), written atomically: a
    temporary file renamed over `path`, so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r.to_dict() if hasattr(r, "to_dict") else r) + "\n")
    os.replace(tmp, path)
    return path
