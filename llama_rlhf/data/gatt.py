"""Ghost Attention (GAtt) data synthesis, paper section 3.3.

Given an instruction `inst` (e.g. "Act as a pirate") and a multi-turn dialog [u1, a1, ..., un, an]:

* SAMPLING: "we concatenate this instruction to all the user messages of the conversation", then sample
  each assistant turn from the latest RLHF model: `sampling_prompt` / `sampling_prompts`;
* TRAINING: "we can drop it in all but the first turn, but this would lead to a mismatch at training time
  between the system message, i.e., all the intermediate assistant messages that come before the last
  turn, and our sample. To fix this issue ... we simply set the loss to 0 for all the tokens from the
  previous turns, including assistant messages": `training_messages` keeps the instruction in the first
  user turn only and `gatt_training_sample` trains on the last assistant turn only.

The instruction is joined in front of the user message (`join_instruction`); `as_system=True` puts it in
the system prompt instead, which the Llama 2 template folds into the first user turn anyway.
"""

from __future__ import annotations

from collections.abc import Sequence

from .chat import ChatFormatError, EncodedDialog, encode_dialog, validate_messages


def join_instruction(instruction: str, user: str) -> str:
    """The user message with the instruction concatenated in front of it."""
    return f"{instruction.strip()}\n{user.strip()}"


def _split(instruction: str | None, messages: Sequence[dict]) -> tuple[str, list[dict]]:
    """(instruction, dialog without system): a leading system message is the instruction when none is given."""
    messages = list(messages)
    if messages and messages[0]["role"] == "system":
        if instruction is not None:
            raise ChatFormatError("gatt: give the instruction either as `instruction` or as a system message")
        instruction, messages = messages[0]["content"], messages[1:]
    if not instruction or not instruction.strip():
        raise ChatFormatError("gatt: empty instruction")
    return instruction, messages


def with_instruction_every_turn(instruction: str | None, messages: Sequence[dict],
                                first_as_system: bool = False) -> list[dict]:
    """The dialog with the instruction concatenated to every user message (the sampling form). With
    `first_as_system`, the first one's copy is the system message instead: where the chat template puts
    a system prompt (Llama 2 folds it into the first user message), the form the model was taught."""
    instruction, body = _split(instruction, messages)
    validate_messages(body)
    out = [
        {"role": "user", "content": join_instruction(instruction, m["content"])}
        if m["role"] == "user" and not (first_as_system and i == 0)
        else dict(m)
        for i, m in enumerate(body)
    ]
    return [{"role": "system", "content": instruction}] + out if first_as_system else out


def sampling_prompt(instruction: str | None, messages: Sequence[dict], first_as_system: bool = False) -> list[dict]:
    """Messages to sample the next assistant turn from: a dialog ending with a user turn, the instruction
    on every user message (the paper's sampling step; generate turn by turn, appending each answer)."""
    augmented = with_instruction_every_turn(instruction, messages, first_as_system)
    validate_messages(augmented, need_last="user")
    return augmented


def sampling_prompts(instruction: str | None, messages: Sequence[dict]) -> list[list[dict]]:
    """For a whole dialog, the sampling prompt of each assistant turn: prefixes ending at each user turn."""
    augmented = with_instruction_every_turn(instruction, messages)
    return [augmented[: i + 1] for i, m in enumerate(augmented) if m["role"] == "user"]


def training_messages(
    instruction: str | None, messages: Sequence[dict], as_system: bool = False
) -> list[dict]:
    """The training dialog: the instruction only in the first user turn (or as the system prompt)."""
    instruction, body = _split(instruction, messages)
    validate_messages(body, need_last="assistant")
    if as_system:
        return [{"role": "system", "content": instruction}] + [dict(m) for m in body]
    first = {"role": "user", "content": join_instruction(instruction, body[0]["content"])}
    return [first] + [dict(m) for m in body[1:]]


def gatt_training_sample(
    tok, instruction: str | None, messages: Sequence[dict], as_system: bool = False
) -> EncodedDialog:
    """Encoded GAtt sample: instruction in the first turn, loss only on the last assistant turn.

    `messages` is the dialog whose assistant turns were sampled with `sampling_prompt` (without the
    instruction in it); a leading system message is taken as the instruction.
    """
    train = training_messages(instruction, messages, as_system)
    last_turn = sum(m["role"] == "assistant" for m in train) - 1
    return encode_dialog(tok, train, train_turns={last_turn})
