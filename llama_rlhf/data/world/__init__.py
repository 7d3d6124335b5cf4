"""The embedded world: a seeded, pure-Python generator of tasks with a programmatic gold judge.

It stands in for the paper's private, human-annotated data so that a tiny Llama can be taken
through SFT -> reward models -> RLHF and its improvement measured. See world.py for the entry
point and judge.py / annotate.py for the scoring rules.
"""

from .annotate import annotate, flip_probability, rating_for_gap, safety_label
from .candidates import (
    QUALITIES,
    Candidate,
    candidates,
    preference_for,
    response_of_quality,
    sft_demo,
)
from .gatt import GattDialog, check_dialog, instruction_ids, instruction_text, keeps
from .judge import correctness, false_refusal, false_refusal_rate, is_safe, judge
from .records import ALL_KINDS, HELPFUL_KINDS, RATINGS, SAFE_FLAGS, SAFETY_LABELS, Preference, Prompt, Scores, SFTRecord
from .risks import RISKS, Risk
from .safety import CATEGORIES, VECTORS, is_refusal, refusal_parts
from .world import World, WorldConfig, build_world  # WorldConfig is llama_rlhf.config.WorldConfig

__all__ = [
    "ALL_KINDS", "CATEGORIES", "HELPFUL_KINDS", "QUALITIES", "RATINGS", "RISKS", "SAFETY_LABELS", "SAFE_FLAGS",
    "VECTORS", "Candidate", "GattDialog", "Preference", "Prompt", "Risk", "SFTRecord", "Scores", "World",
    "WorldConfig", "annotate", "build_world", "candidates", "check_dialog", "correctness", "false_refusal",
    "false_refusal_rate", "flip_probability", "instruction_ids", "instruction_text", "is_refusal", "is_safe",
    "judge", "keeps", "preference_for", "rating_for_gap", "refusal_parts", "response_of_quality",
    "safety_label", "sft_demo",
]
