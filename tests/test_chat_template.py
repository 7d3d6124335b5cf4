"""A checkpoint that ships its own chat template (a BPE `tokenizer.json` folder, ChatML as SmolLM2 uses)
is formatted with transformers' `apply_chat_template`; the assistant mask is checked against
`apply_chat_template`'s own token ids, turn by turn."""

import json
import shutil
from pathlib import Path

import pytest
from conftest import CHATML

from llama_rlhf.data.chat import encode_dialog, encode_exchange, encode_prompt
from llama_rlhf.data.gatt import gatt_training_sample
from llama_rlhf.tokenizer import load_tokenizer

LLAMA2_SP = Path(__file__).parent / "fixtures" / "llama2_tokenizer" / "tokenizer.model"
DIALOG = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 3 plus 4?"},
    {"role": "assistant", "content": "The answer is 7."},
    {"role": "user", "content": "  And 5 plus 5?\n"},
    {"role": "assistant", "content": "It is 10.\n\nDone ✓"},
]


@pytest.fixture(scope="module")
def chatml(bpe_chat_folder):
    return load_tokenizer(bpe_chat_folder)


def _hf_ids(tok, messages, generation_prompt):
    return list(tok.hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt)
                ["input_ids"])


def test_tokenizer_json_folder_loads(chatml):
    assert not (chatml.folder / "tokenizer.model").exists()
    assert chatml.chat_template is not None
    assert (chatml.bos_id, chatml.eos_id, chatml.pad_id) == (1, 2, 0)
    text = "Hello,  world!\n ünï 12"
    assert chatml.encode(text) == chatml.hf.encode(text, add_special_tokens=False)
    assert chatml.decode(chatml.encode(text)) == text


def test_dialog_and_mask_follow_apply_chat_template(chatml):
    enc = encode_dialog(chatml, DIALOG)
    assert enc.input_ids == _hf_ids(chatml, DIALOG, False)
    expected = [0] * len(enc.input_ids)
    for i in (2, 4):  # each answer starts after the generation prompt and ends at its <|im_end|>
        start = len(_hf_ids(chatml, DIALOG[:i], True))
        end = enc.input_ids.index(chatml.eos_id, start) + 1
        expected[start:end] = [1] * (end - start)
    assert enc.loss_mask == expected
    trained = chatml.decode([t for t, m in zip(enc.input_ids, enc.loss_mask) if m], skip_special=False)
    assert trained == "The answer is 7.<|im_end|>It is 10.\n\nDone ✓<|im_end|>"


def test_prompt_and_exchange_are_prefixes_of_the_dialog(chatml):
    enc = encode_dialog(chatml, DIALOG)
    prompt = encode_prompt(chatml, DIALOG[:-1])
    assert prompt == _hf_ids(chatml, DIALOG[:-1], True)
    p, a = encode_exchange(chatml, DIALOG[:-1], DIALOG[-1]["content"])
    assert p == prompt and p + a == enc.input_ids[: len(p) + len(a)]
    assert a[-1] == chatml.eos_id and enc.input_ids[len(p) + len(a):] == chatml.encode("\n")


def test_gatt_goes_through_the_template(chatml):
    enc = gatt_training_sample(chatml, "Act as a pirate.", DIALOG[1:])
    trained = chatml.decode([t for t, m in zip(enc.input_ids, enc.loss_mask) if m], skip_special=False)
    assert trained == "It is 10.\n\nDone ✓<|im_end|>"
    assert enc.input_ids == encode_dialog(chatml, [{"role": "user", "content": "Act as a pirate.\nWhat is 3 plus 4?"},
                                                   *DIALOG[2:]]).input_ids


LLAMA2_STYLE = ("{% if messages[0]['role'] == 'system' %}{% set sys = '<<SYS>>\\n' + messages[0]['content'] + "
                "'\\n<</SYS>>\\n\\n' %}{% set messages = messages[1:] %}{% else %}{% set sys = '' %}{% endif %}"
                "{% for m in messages %}{% if m['role'] == 'user' %}{{ bos_token + '[INST] ' + "
                "(sys if loop.first else '') + m['content'].strip() + ' [/INST]' }}{% else %}"
                "{{ ' ' + m['content'].strip() + ' ' + eos_token }}{% endif %}{% endfor %}")


def test_a_shipped_llama2_template_keeps_the_exact_reference_encoding(tmp_path):
    """Llama 2 chat checkpoints ship a template rendering Llama 2's format; the sentencepiece reference
    path stays in use for it, while any other template on a sentencepiece folder is applied."""
    folder = tmp_path / "llama2"
    folder.mkdir()
    shutil.copy2(LLAMA2_SP, folder / "tokenizer.model")
    for template, own in ((LLAMA2_STYLE, False), (CHATML, True)):
        (folder / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
            "chat_template": template}))
        tok = load_tokenizer(folder)
        assert (tok.chat_template is not None) == own
