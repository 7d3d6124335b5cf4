"""The world's kinds and labels, and the judge's `Scores`. The records the world emits (Prompt, SFTRecord,
Preference) are the pipeline's own, from `llama_rlhf.data.records`; world diagnostics go in their `meta`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from llama_rlhf.data.records import RATINGS, Preference, Prompt, SFTRecord  # noqa: F401 - the shared record types

# The paper's per-pair safety labels; a pair whose chosen response is unsafe while the
# rejected one is safe gets no label: it is dropped.
SAFETY_LABELS = ("chosen_safe_other_unsafe", "both_safe", "both_unsafe")
# Each label as (chosen_safe, rejected_safe), the per-response flags the safety RM's auxiliary loss reads.
SAFE_FLAGS = {"chosen_safe_other_unsafe": (True, False), "both_safe": (True, True), "both_unsafe": (False, False)}

HELPFUL_KINDS = ("arith", "count", "reverse", "sort", "lookup", "echo")
ALL_KINDS = HELPFUL_KINDS + ("unsafe", "gatt")


@dataclass(frozen=True)
class Scores:
    """Gold judge output; both in [0, 1]."""

    helpfulness: float
    safety: float

    def to_dict(self) -> dict:
        return asdict(self)
