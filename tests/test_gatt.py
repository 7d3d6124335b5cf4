"""Ghost Attention synthesis: sampling prompts carry the instruction on every user turn; the training sample
carries it on the first only and is trained on the last assistant turn only."""

from __future__ import annotations

import pytest

from llama_rlhf.data.chat import ChatFormatError, encode_dialog, encode_response
from llama_rlhf.data.gatt import (
    gatt_training_sample,
    join_instruction,
    sampling_prompt,
    sampling_prompts,
    training_messages,
    with_instruction_every_turn,
)

INST = "Act as a pirate."
DIALOG = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Ahoy!"},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "Four, matey."},
    {"role": "user", "content": "Bye"},
    {"role": "assistant", "content": "Arr, farewell."},
]


class CharTok:
    bos_id, eos_id = 1, 2

    def encode(self, text):
        return [3 + (ord(ch) % 60) for ch in text]


def test_join_instruction():
    assert join_instruction(" Act as a pirate. ", "Hi ") == "Act as a pirate.\nHi"


def test_sampling_prompts_instruction_on_every_user_turn():
    prompts = sampling_prompts(INST, DIALOG)
    assert len(prompts) == 3
    assert [len(p) for p in prompts] == [1, 3, 5]
    for p in prompts:
        assert p[-1]["role"] == "user"
        assert all(m["content"].startswith(INST) for m in p if m["role"] == "user")
        assert all(not m["content"].startswith(INST) for m in p if m["role"] == "assistant")
    assert prompts[2][2] == {"role": "user", "content": f"{INST}\n2+2?"}
    assert sampling_prompt(INST, DIALOG[:3]) == prompts[1]
    with pytest.raises(ChatFormatError):
        sampling_prompt(INST, DIALOG[:2])  # must end with a user turn
    assert with_instruction_every_turn(None, [{"role": "system", "content": INST}] + DIALOG[:1]) == prompts[0]


def test_sampling_prompt_with_the_first_copy_as_the_system_message():
    p = sampling_prompt(INST, DIALOG[:5], first_as_system=True)
    assert p[0] == {"role": "system", "content": INST} and p[1] == DIALOG[0]  # first user turn as it was
    assert [m["content"] for m in p if m["role"] == "user"][1:] == [f"{INST}\n2+2?", f"{INST}\nBye"]
    assert [m for m in p if m["role"] == "assistant"] == [DIALOG[1], DIALOG[3]]
    # Llama 2's template folds the system message into the first user turn: the instruction then opens every
    # user message of the prompt it renders, the first in the <<SYS>> block the model was taught it in
    first = sampling_prompt(INST, DIALOG[:1], first_as_system=True)
    assert first == [{"role": "system", "content": INST}, DIALOG[0]]


def test_training_messages_instruction_in_first_turn_only():
    msgs = training_messages(INST, DIALOG)
    assert msgs[0] == {"role": "user", "content": f"{INST}\nHi"}
    assert msgs[1:] == DIALOG[1:]
    assert training_messages(INST, DIALOG, as_system=True) == [{"role": "system", "content": INST}] + DIALOG
    # a leading system message is the instruction
    assert training_messages(None, [{"role": "system", "content": INST}] + DIALOG) == msgs
    with pytest.raises(ChatFormatError):
        training_messages(INST, [{"role": "system", "content": INST}] + DIALOG)
    with pytest.raises(ChatFormatError):
        training_messages("  ", DIALOG)


def test_gatt_training_sample_loss_only_on_last_turn():
    tok = CharTok()
    enc = gatt_training_sample(tok, INST, DIALOG)
    ref = encode_dialog(tok, training_messages(INST, DIALOG), train_turns={2})
    assert enc.input_ids == ref.input_ids and enc.loss_mask == ref.loss_mask
    # the trained tokens are exactly the last answer and its EOS
    trained = [t for t, m in zip(enc.input_ids, enc.loss_mask) if m]
    assert trained == encode_response(tok, "Arr, farewell.")
    # the instruction appears once: in the first user turn
    inst_ids = tok.encode(INST)
    hits = [i for i in range(len(enc.input_ids)) if enc.input_ids[i : i + len(inst_ids)] == inst_ids]
    first_answer = enc.input_ids.index(tok.eos_id)
    assert len(hits) == 1 and hits[0] < first_answer
    sys_form = gatt_training_sample(tok, INST, DIALOG, as_system=True)
    assert [t for t, m in zip(sys_form.input_ids, sys_form.loss_mask) if m] == trained


def test_gatt_with_the_trained_tokenizer(tiny_tokenizer):
    enc = gatt_training_sample(tiny_tokenizer, INST, DIALOG)
    trained = [t for t, m in zip(enc.input_ids, enc.loss_mask) if m]
    assert tiny_tokenizer.decode(trained).strip() == "Arr, farewell."
    assert tiny_tokenizer.decode(enc.input_ids).count(INST) == 1
