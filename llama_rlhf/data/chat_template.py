"""A checkpoint's own chat template (`chat_template` in its tokenizer_config.json or chat_template.jinja),
applied with transformers' `apply_chat_template`, and the mask of the assistant tokens it produces.

Templates rarely mark the assistant's text (`{% generation %}`), so the mask is found from the text:
the dialog up to assistant turn k rendered with the generation prompt is a prefix of the dialog rendered
through turn k; the characters between the two are that turn's answer and its end-of-turn marker. The
whole dialog is tokenized once, as `apply_chat_template(tokenize=True)` does, and a token is an answer
token when its characters lie inside an answer span. Anything after the last end-of-turn token in a span
(a newline the template adds between turns) belongs to the next prompt, as at generation time, where
the engine stops at that token.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence


class TemplateError(ValueError):
    pass


def _render(tok, messages: Sequence[dict], generation_prompt: bool) -> str:
    return tok.hf.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=generation_prompt)


def _ids_offsets(tok, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    enc = tok.hf(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def answer_spans(tok, messages: Sequence[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered dialog and, per assistant turn, the (start, end) characters of its answer."""
    text = _render(tok, messages, generation_prompt=False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = _render(tok, messages[:i], generation_prompt=True)
        through = _render(tok, messages[: i + 1], generation_prompt=False)
        if not (text.startswith(through) and through.startswith(before)):
            raise TemplateError(
                f"chat template of {tok.folder}: rendering turn {i} does not extend the earlier turns, "
                "so the assistant tokens cannot be located"
            )
        spans.append((len(before), len(through)))
    return text, spans


def encode_dialog(tok, messages: Sequence[dict], train_turns: Collection[int] | None = None):
    """(ids, mask) of a dialog ending with an assistant turn: 1 on the answers of `train_turns` (None =
    all) and on the end-of-turn token closing each."""
    text, spans = answer_spans(tok, messages)
    ids, offsets = _ids_offsets(tok, text)
    mask = [0] * len(ids)
    for t, (lo, hi) in enumerate(spans):
        inside = [j for j, (a, b) in enumerate(offsets) if a >= lo and b <= hi and b > a]
        ends = [j for j in inside if ids[j] == tok.eos_id]
        if ends:  # the span ends at the end-of-turn token; what follows starts the next prompt
            inside = [j for j in inside if j <= ends[-1]]
        if train_turns is None or t in train_turns:
            for j in inside:
                mask[j] = 1
    return ids, mask


def encode_prompt(tok, messages: Sequence[dict]) -> list[int]:
    """Ids of a dialog ending with a user turn, with the template's generation prompt."""
    return _ids_offsets(tok, _render(tok, messages, generation_prompt=True))[0]
