"""The Llama 2 chat template, as token ids with a mask of the assistant tokens.

    <s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user_1} [/INST] {assistant_1} </s><s>[INST] {user_2} [/INST] ...

This is Meta's reference format (llama `chat_completion`): each user/assistant exchange is wrapped in
BOS ... EOS, the system prompt is folded into the first user turn. Prompt and answer are encoded
separately, exactly as at generation time (the engine receives the prompt ids and produces the answer),
so training and sampling see the same token boundaries.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"
ROLES = ("system", "user", "assistant")


class ChatFormatError(ValueError):
    pass


@dataclass
class EncodedDialog:
    input_ids: list[int]
    loss_mask: list[int]
    """1 on assistant tokens (and the EOS closing each assistant turn) that are trained on."""


def validate_messages(messages: Sequence[dict], need_last: str | None = None) -> None:
    """Optional system first, then strictly alternating user/assistant starting with user."""
    if not messages:
        raise ChatFormatError("messages: empty dialog")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or set(m) - {"role", "content"} or "role" not in m or "content" not in m:
            raise ChatFormatError(f"messages[{i}]: expected {{'role', 'content'}}, got {m!r}")
        if m["role"] not in ROLES:
            raise ChatFormatError(f"messages[{i}].role: must be one of {ROLES}, got {m['role']!r}")
        if not isinstance(m["content"], str):
            raise ChatFormatError(f"messages[{i}].content: must be a string, got {type(m['content']).__name__}")
    body = messages[1:] if messages[0]["role"] == "system" else messages
    for i, m in enumerate(body):
        want = "user" if i % 2 == 0 else "assistant"
        if m["role"] != want:
            j = i + (len(messages) - len(body))
            raise ChatFormatError(f"messages[{j}].role: expected {want!r} (turns alternate), got {m['role']!r}")
    if need_last and body and body[-1]["role"] != need_last:
        raise ChatFormatError(f"messages: the last turn must be {need_last!r}, got {body[-1]['role']!r}")
    if not body:
        raise ChatFormatError("messages: a system prompt alone is not a dialog")


def _turns(messages: Sequence[dict]) -> list[tuple[str, str | None]]:
    """Fold the system prompt into the first user turn; pair each user turn with its answer."""
    system = messages[0]["content"] if messages[0]["role"] == "system" else None
    body = list(messages[1:] if system is not None else messages)
    pairs = []
    for i in range(0, len(body), 2):
        user = body[i]["content"].strip()
        if i == 0 and system is not None:
            user = f"{B_SYS}{system.strip()}{E_SYS}{user}"
        answer = body[i + 1]["content"].strip() if i + 1 < len(body) else None
        pairs.append((user, answer))
    return pairs


def encode_dialog(
    tok, messages: Sequence[dict], train_turns: Collection[int] | None = None
) -> EncodedDialog:
    """Token ids of a whole dialog ending with an assistant turn, and its loss mask.

    `train_turns`: indices (0-based, counting assistant turns) whose answers are trained on; None = all.
    Ghost Attention passes only the last turn(s) so the loss is zeroed on earlier turns.
    """
    validate_messages(messages, need_last="assistant")
    ids: list[int] = []
    mask: list[int] = []
    for t, (user, answer) in enumerate(_turns(messages)):
        prompt = [tok.bos_id] + tok.encode(f"{B_INST} {user} {E_INST}")
        reply = tok.encode(answer) + [tok.eos_id]
        on = 1 if train_turns is None or t in train_turns else 0
        ids += prompt + reply
        mask += [0] * len(prompt) + [on] * len(reply)
    return EncodedDialog(ids, mask)


def encode_prompt(tok, messages: Sequence[dict]) -> list[int]:
    """Token ids to generate the next assistant turn from (the dialog ends with a user turn)."""
    validate_messages(messages, need_last="user")
    ids: list[int] = []
    turns = _turns(messages)
    for user, answer in turns[:-1]:
        ids += [tok.bos_id] + tok.encode(f"{B_INST} {user} {E_INST}") + tok.encode(answer) + [tok.eos_id]
    ids += [tok.bos_id] + tok.encode(f"{B_INST} {turns[-1][0]} {E_INST}")
    return ids


def encode_response(tok, text: str) -> list[int]:
    """An assistant answer as generated: its tokens and the closing EOS."""
    return tok.encode(text.strip()) + [tok.eos_id]


def render(messages: Sequence[dict]) -> str:
    """The template as text (for display and logs)."""
    validate_messages(messages)
    out = []
    for user, answer in _turns(messages):
        out.append(f"<s>{B_INST} {user} {E_INST}")
        if answer is not None:
            out.append(f" {answer} </s>")
    return "".join(out)


def fit_prompt(tok, messages: Sequence[dict], max_len: int) -> tuple[list[int], int]:
    """Prompt ids of at most `max_len` tokens: the system prompt and the latest turns are kept, the
    oldest user/assistant exchanges dropped whole (never BOS, the system prompt or the current request).
    Returns (ids, number of exchanges dropped); raises when even the system prompt and the last user
    turn do not fit."""
    validate_messages(messages, need_last="user")
    system = list(messages[:1]) if messages[0]["role"] == "system" else []
    body = list(messages[len(system):])
    dropped = 0
    while True:
        ids = encode_prompt(tok, system + body)
        if len(ids) <= max_len:
            return ids, dropped
        if len(body) == 1:
            raise ChatFormatError(f"prompt: the system prompt and the last user turn take {len(ids)} tokens, "
                                  f"more than the prompt budget of {max_len}")
        body, dropped = body[2:], dropped + 1
