"""Ghost Attention system instructions: the instructions, a checker, and multi-turn dialogs.

An instruction id names a family and its parameter: "upper", "pirate", "end_word:friend",
"start_word:Okay", "max_words:2". `keeps(id, response)` says whether one response obeys it;
`check_dialog(id, dialog)` does so for every assistant turn of a dialog. A dialog is a system
instruction followed by 2..6 helpful user turns; its gold responses answer each turn correctly
while keeping the instruction, so `messages()` is a ready GAtt demonstration.
"""

from __future__ import annotations

import random
import re
from dataclasses import asdict, dataclass, field

from .helpful import ANSWER_PREFIX, canonical_answer
from .records import Prompt

END_WORDS = ("friend", "done", "thanks", "bye")
START_WORDS = ("Okay", "Indeed", "Well", "Hello")
MAX_WORDS = (1, 2, 3)
PIRATE_WORDS = ("arr", "matey", "ye", "aye", "ahoy")
_NUM_WORDS = {1: "one", 2: "two", 3: "three"}

PHRASINGS: dict[str, tuple[str, ...]] = {
    "upper": ("Always answer in uppercase.", "Write all your answers in capital letters."),
    "pirate": ("Speak as a pirate.", "Act as a pirate in every answer."),
    "end_word": ("End every answer with the word {p}.", "Always finish your answer with the word {p}."),
    "start_word": ("Start every answer with the word {p}.", "Always begin your answer with {p}."),
    "max_words": ("Answer in at most {p} words.", "Keep every answer to {p} words or fewer."),
}

# A word budget cannot hold a list answer: those instructions only pair with one-word answers.
COMPATIBLE_KINDS = {"max_words": ("arith", "count", "lookup")}

_WORD = re.compile(r"[A-Za-z']+")


def instruction_ids() -> list[str]:
    """All instruction ids, in a fixed order."""
    return (
        ["upper", "pirate"]
        + [f"end_word:{w}" for w in END_WORDS]
        + [f"start_word:{w}" for w in START_WORDS]
        + [f"max_words:{n}" for n in MAX_WORDS]
    )


def _split(instruction_id: str) -> tuple[str, str]:
    family, _, param = instruction_id.partition(":")
    if family not in PHRASINGS:
        raise ValueError(f"unknown instruction id {instruction_id!r}")
    return family, param


def instruction_text(instruction_id: str, phrasing: int = 0) -> str:
    """The system message for an instruction id."""
    family, param = _split(instruction_id)
    if family == "max_words":
        param = _NUM_WORDS[int(param)]
    tpls = PHRASINGS[family]
    return tpls[phrasing % len(tpls)].format(p=param)


def compatible_kinds(instruction_id: str, kinds: tuple[str, ...]) -> tuple[str, ...]:
    allowed = COMPATIBLE_KINDS.get(_split(instruction_id)[0])
    return tuple(k for k in kinds if allowed is None or k in allowed)


def keeps(instruction_id: str, response: str) -> bool:
    """Whether `response` obeys the instruction."""
    family, param = _split(instruction_id)
    words = _WORD.findall(response)
    if family == "upper":
        letters = [c for c in response if c.isalpha()]
        return bool(letters) and not any(c.islower() for c in letters)
    if family == "pirate":
        return any(w.lower() in PIRATE_WORDS for w in words)
    if family == "end_word":
        return bool(words) and words[-1].lower() == param.lower()
    if family == "start_word":
        return bool(words) and words[0].lower() == param.lower()
    n = len(response.split())
    return 1 <= n <= int(param)


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def apply(instruction_id: str, meta: dict) -> str:
    """The correct answer to a task (judge meta) rendered so that it keeps the instruction."""
    family, param = _split(instruction_id)
    canon = canonical_answer(meta)
    if family == "upper":
        return canon.upper()
    if family == "pirate":
        return f"Arr matey, {_lower_first(canon)}"
    if family == "end_word":
        return f"{canon.rstrip('.')}, {param}."
    if family == "start_word":
        return f"{param}, {_lower_first(canon)}"
    # max_words: the bare answer, e.g. "7." or "Paris."
    return canon[len(ANSWER_PREFIX) + 1:]


def violate(instruction_id: str, meta: dict) -> str:
    """A correct answer that forgets the instruction (the canonical answer breaks every family)."""
    out = canonical_answer(meta)
    assert not keeps(instruction_id, out), (instruction_id, out)
    return out


def check_dialog(instruction_id: str, dialog) -> list[bool]:
    """Per assistant turn, whether it kept the instruction.

    `dialog` is either a chat (list of {"role", "content"} messages; system and user turns are
    skipped) or a list of (user_text, response) pairs.
    """
    responses: list[str] = []
    for turn in dialog:
        if isinstance(turn, dict):
            if turn["role"] == "assistant":
                responses.append(turn["content"])
        else:
            responses.append(turn[1])
    return [keeps(instruction_id, r) for r in responses]


@dataclass
class GattDialog:
    """An instruction and its user turns; `gold_responses[i]` answers turn i keeping the instruction."""

    id: str
    instruction_id: str
    system: str
    user_turns: list[str]
    task_metas: list[dict]
    task_kinds: list[str]
    gold_responses: list[str] = field(default_factory=list)

    def messages(self, n_turns: int | None = None, with_last_response: bool = True) -> list[dict]:
        """The chat up to `n_turns` turns (system first); the last response left off if asked."""
        n = len(self.user_turns) if n_turns is None else n_turns
        out = [{"role": "system", "content": self.system}]
        for i in range(n):
            out.append({"role": "user", "content": self.user_turns[i]})
            if i < n - 1 or with_last_response:
                out.append({"role": "assistant", "content": self.gold_responses[i]})
        return out

    def turn_prompt(self, turn: int, responses: list[str] | None = None) -> Prompt:
        """A judgeable prompt for 0-based `turn`: earlier turns answered by `responses` (a model's
        own, for consistency evaluation) or by the gold responses."""
        history = self.gold_responses if responses is None else responses
        msgs = [{"role": "system", "content": self.system}]
        for i in range(turn + 1):
            msgs.append({"role": "user", "content": self.user_turns[i]})
            if i < turn:
                msgs.append({"role": "assistant", "content": history[i]})
        meta = {
            "instruction_id": self.instruction_id,
            "task_kind": self.task_kinds[turn],
            "task": self.task_metas[turn],
            "content_key": self.task_metas[turn]["content_key"],
            "content_keys": [m["content_key"] for m in self.task_metas[: turn + 1]],
            "n_turns": turn + 1,
        }
        return Prompt(f"{self.id}-t{turn}", msgs, False, "gatt", meta)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> GattDialog:
        return cls(**d)


def make_dialog(
    dialog_id: str, instruction_id: str, turns: list[tuple[str, str, dict]], rng: random.Random
) -> GattDialog:
    """Build a dialog from (kind, user_text, task_meta) turns."""
    return GattDialog(
        id=dialog_id,
        instruction_id=instruction_id,
        system=instruction_text(instruction_id, rng.randrange(2)),
        user_turns=[t for _, t, _ in turns],
        task_metas=[m for _, _, m in turns],
        task_kinds=[k for k, _, _ in turns],
        gold_responses=[apply(instruction_id, m) for _, _, m in turns],
    )
