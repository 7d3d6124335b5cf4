"""Plain, JSON-serialisable records that leave the world: prompts, scores, SFT and preference pairs.

They travel through Ray and JSONL files, so each has `to_dict` / `from_dict` and holds only
str / int / float / bool / list / dict values.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from llama_rlhf.data.records import RATINGS, Prompt  # noqa: F401 - the shared record types

# The paper's per-pair safety labels; a pair whose chosen response is unsafe while the
# rejected one is safe gets no label: it is dropped.
SAFETY_LABELS = ("chosen_safe_other_unsafe", "both_safe", "both_unsafe")

HELPFUL_KINDS = ("arith", "count", "reverse", "sort", "lookup", "echo")
ALL_KINDS = HELPFUL_KINDS + ("unsafe", "gatt")


@dataclass(frozen=True)
class Scores:
    """Gold judge output; both in [0, 1]."""

    helpfulness: float
    safety: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SFTRecord:
    """One demonstration. `correct` is False for the deliberately imperfect ones (see `error`)."""

    prompt_id: str
    messages: list[dict]
    response: str
    kind: str
    is_safety: bool
    correct: bool = True
    error: str = ""  # "", "wrong_number", "wrong_order", "wrong_word", "unsafe", "instruction"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SFTRecord:
        return cls(**{**d, "messages": [dict(m) for m in d["messages"]]})


@dataclass
class Preference:
    """One annotated comparison: `chosen` is preferred to `rejected` at level `rating`."""

    prompt: list[dict]
    chosen: str
    rejected: str
    rating: str
    is_safety: bool
    prompt_id: str = ""
    kind: str = ""
    safety_label: str = ""  # one of SAFETY_LABELS
    gap: float = 0.0  # gold score gap the rating came from (diagnostics only)
    flipped: bool = False  # the annotator's label noise fired (diagnostics only)

    def __post_init__(self) -> None:
        if self.rating not in RATINGS:
            raise ValueError(f"rating must be one of {RATINGS}, got {self.rating!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Preference:
        return cls(**{**d, "prompt": [dict(m) for m in d["prompt"]]})
