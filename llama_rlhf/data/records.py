"""The records that flow through the pipeline: prompts, SFT demonstrations, preference pairs.

All are JSON-serialisable (they travel through Ray and into run folders as JSONL).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

# The paper's 4-level preference rating, strongest first (index = margin-table column).
RATINGS = ("significantly_better", "better", "slightly_better", "negligibly_better")
RATING_ALIASES = {
    "significantly better": "significantly_better",
    "slightly better": "slightly_better",
    "negligibly better": "negligibly_better",
    "negligibly better / unsure": "negligibly_better",
    "negligibly_better_or_unsure": "negligibly_better",
    "unsure": "negligibly_better",
}


def normalize_rating(value) -> str:
    """A rating name (aliases accepted) or an index 0..3 -> canonical name; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"must be one of {RATINGS} or 0..3, got {value!r}")
    if isinstance(value, int):
        if 0 <= value < len(RATINGS):
            return RATINGS[value]
        raise ValueError(f"must be one of {RATINGS} or 0..3, got {value!r}")
    if isinstance(value, str):
        v = value.strip().lower()
        v = RATING_ALIASES.get(v, v)
        if v in RATINGS:
            return v
    raise ValueError(f"must be one of {RATINGS} or 0..3, got {value!r}")


@dataclass
class Prompt:
    id: str
    messages: list[dict]
    """The dialog so far, ending with a user turn."""
    is_safety: bool = False
    kind: str = ""
    meta: dict = field(default_factory=dict)
    """What the gold judge needs (embedded world): answer, risk category, instruction id, ..."""

    @property
    def user_text(self) -> str:
        """The last user turn (the one to be answered)."""
        return self.messages[-1]["content"]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Prompt:
        return cls(id=d["id"], messages=[dict(m) for m in d["messages"]], is_safety=bool(d.get("is_safety", False)),
                   kind=d.get("kind", ""), meta=dict(d.get("meta", {})))


@dataclass
class SFTRecord:
    messages: list[dict]
    """A dialog ending with an assistant turn."""
    train_turns: list[int] | None = None
    """Assistant turns trained on (None = all); Ghost Attention trains only the last."""
    meta: dict = field(default_factory=dict)
    """Diagnostics only, never trained on (embedded world: prompt_id, kind, is_safety, correct, error)."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SFTRecord:
        return cls(**d)


@dataclass
class Preference:
    messages: list[dict]
    """The prompt dialog, ending with a user turn."""
    chosen: str
    rejected: str
    rating: str = "negligibly_better"
    is_safety: bool = False
    chosen_safe: bool | None = None
    rejected_safe: bool | None = None
    """Per-response safety labels (the paper's safety annotation), used by the safety RM's auxiliary loss."""
    meta: dict = field(default_factory=dict)
    """Diagnostics only, never trained on (embedded world: prompt_id, kind, safety_label, gap, flipped)."""
    source: str = ""
    """The data source it came from (a file, `world`), for the mix report."""
    mix_role: str = ""
    """Its source's role in the RM data mix (llama_rlhf.data.mix.ROLES); '' = by `is_safety`."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Preference:
        return cls(**d)
