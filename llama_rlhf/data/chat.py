"""The Llama 2 chat template, as token ids with a mask of the assistant tokens.

    <s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user_1} [/INST] {assistant_1} </s><s>[INST] {user_2} [/INST] ...

This is Meta's reference format (llama `chat_completion`): each user/assistant exchange is wrapped in
BOS ... EOS and encoded in one piece, `[INST] {user} [/INST] {answer} ` (so a space token precedes EOS),
the system prompt is folded into the first user turn. `encode_prompt` equals the reference token for
token (tests/fixtures/llama2_chat_reference.json); `encode_dialog` of a dialog is the reference prompt of
that dialog plus a next user turn, minus that turn, so training and sampling see the same boundaries.

A tokenizer that ships its own chat template (`Tokenizer.chat_template`) is formatted with it instead
(llama_rlhf.data.chat_template); every builder here (SFT, GAtt, preference pairs, prompts) dispatches.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from llama_rlhf.data import chat_template

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
    """Fold the system prompt into the first user turn; pair each user turn with its answer.

    Stripping follows the reference: the folded `<<SYS>>...<</SYS>>\n\nuser` string is stripped as a
    whole (the system text and the user's leading whitespace inside it are kept), answers are stripped.
    """
    system = messages[0]["content"] if messages[0]["role"] == "system" else None
    body = list(messages[1:] if system is not None else messages)
    pairs = []
    for i in range(0, len(body), 2):
        user = body[i]["content"]
        if i == 0 and system is not None:
            user = f"{B_SYS}{system}{E_SYS}{user}"
        answer = body[i + 1]["content"].strip() if i + 1 < len(body) else None
        pairs.append((user.strip(), answer))
    return pairs


def _prompt_ids(tok, user: str) -> list[int]:
    return [tok.bos_id] + tok.encode(f"{B_INST} {user} {E_INST}")


def _exchange(tok, user: str, answer: str) -> tuple[list[int], list[int]]:
    """One past exchange as the reference encodes it, in one piece: `<s>[INST] u [/INST] a </s>` (the
    space before EOS is a token of its own), split into (prompt, answer) ids.

    Sentencepiece never merges across a space, so the prompt encoded alone is a prefix of the exchange
    and the answer part equals `encode_response(answer)`: what is trained on is what is generated.
    """
    prompt = _prompt_ids(tok, user)
    full = [tok.bos_id] + tok.encode(f"{B_INST} {user} {E_INST} {answer} ") + [tok.eos_id]
    if full[: len(prompt)] != prompt:
        raise ChatFormatError(f"messages: the tokenizer merges [/INST] with the answer {answer[:40]!r}")
    return prompt, full[len(prompt):]


def encode_dialog(
    tok, messages: Sequence[dict], train_turns: Collection[int] | None = None
) -> EncodedDialog:
    """Token ids of a whole dialog ending with an assistant turn, and its loss mask.

    `train_turns`: indices (0-based, counting assistant turns) whose answers are trained on; None = all.
    Ghost Attention passes only the last turn(s) so the loss is zeroed on earlier turns.
    """
    validate_messages(messages, need_last="assistant")
    if _own_template(tok):
        return EncodedDialog(*chat_template.encode_dialog(tok, messages, train_turns))
    ids: list[int] = []
    mask: list[int] = []
    for t, (user, answer) in enumerate(_turns(messages)):
        prompt, reply = _exchange(tok, user, answer)
        on = 1 if train_turns is None or t in train_turns else 0
        ids += prompt + reply
        mask += [0] * len(prompt) + [on] * len(reply)
    return EncodedDialog(ids, mask)


def encode_prompt(tok, messages: Sequence[dict]) -> list[int]:
    """Token ids to generate the next assistant turn from (the dialog ends with a user turn): Meta's
    `chat_completion` prompt, every past turn included."""
    validate_messages(messages, need_last="user")
    if _own_template(tok):
        return chat_template.encode_prompt(tok, messages)
    ids: list[int] = []
    turns = _turns(messages)
    for user, answer in turns[:-1]:
        prompt, reply = _exchange(tok, user, answer)
        ids += prompt + reply
    return ids + _prompt_ids(tok, turns[-1][0])


def encode_response(tok, text: str) -> list[int]:
    """An assistant answer as it closes an exchange (with sentencepiece: its tokens, the space token, EOS),
    cut from an exchange so that it equals the answer part of `encode_dialog` for any tokenizer."""
    return _exchange(tok, "", text.strip())[1]


def encode_exchange(tok, messages: Sequence[dict], answer: str) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids) of a prompt dialog and one answer, as `encode_dialog` lays them out."""
    if not _own_template(tok):
        return encode_prompt(tok, messages), encode_response(tok, answer)
    prompt = encode_prompt(tok, messages)
    enc = encode_dialog(tok, [*messages, {"role": "assistant", "content": answer}])
    if enc.input_ids[: len(prompt)] != prompt:
        raise ChatFormatError(f"chat template of {tok.folder}: the generation prompt is not a prefix of the dialog")
    # up to the end-of-turn token: a separator the template adds after it belongs to the next prompt
    end = len(enc.loss_mask) - enc.loss_mask[::-1].index(1) if 1 in enc.loss_mask else len(prompt)
    return prompt, enc.input_ids[len(prompt):end]


def _own_template(tok) -> bool:
    """The checkpoint ships a chat template: use it instead of Llama 2's."""
    return getattr(tok, "chat_template", None) is not None


def render(messages: Sequence[dict]) -> str:
    """The template as text (for display and logs)."""
    validate_messages(messages)
    out = []
    for user, answer in _turns(messages):
        out.append(f"<s>{B_INST} {user} {E_INST}")
        if answer is not None:
            out.append(f" {answer} </s>")
    return "".join(out)

