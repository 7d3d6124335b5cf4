"""Llama 2's chat format and tokenizer on Llama 2's real 32K `tokenizer.model`, against Meta's reference.

The expected ids were produced by running Meta's `chat_completion` (tests/fixtures/make_llama2_chat_reference.py);
with META_LLAMA_REPO set to a checkout of meta-llama/llama the reference is also rerun here.
"""

import hashlib
import json
import os
from pathlib import Path

import pytest
import sentencepiece as spm
from hypothesis import given, settings
from hypothesis import strategies as st

from llama_rlhf.data.chat import encode_dialog, encode_prompt, encode_response
from llama_rlhf.tokenizer import load_tokenizer

FIXTURES = Path(__file__).parent / "fixtures"
SP_MODEL = FIXTURES / "llama2_tokenizer" / "tokenizer.model"
REFERENCE = json.loads((FIXTURES / "llama2_chat_reference.json").read_text(encoding="utf-8"))
CASES = REFERENCE["cases"]
TEXTS = [
    " leading", "  two leading", "a  b   c", "line\nnext\n\n  indented", "trailing  ", "\ttab\t", " ", "\n",
    "12345 67.8 007 1e10", "héllo ünï ✓ 日本語 😀 ß ø — “q” …", "<s>hi</s> [INST] x [/INST] <<SYS>>",
    "Hello,  world!\nNew line ✓ ünï", "",
]


@pytest.fixture(scope="module")
def llama2():
    return load_tokenizer(FIXTURES / "llama2_tokenizer")


@pytest.fixture(scope="module")
def sp():
    return spm.SentencePieceProcessor(model_file=str(SP_MODEL))


def test_fixture_is_llama2_tokenizer(llama2):
    assert hashlib.sha256(SP_MODEL.read_bytes()).hexdigest() == REFERENCE["tokenizer_sha256"]
    assert (llama2.vocab_size, llama2.bos_id, llama2.eos_id, llama2.pad_id) == (32000, 1, 2, 0)


@pytest.mark.parametrize("i", range(len(CASES)))
def test_prompt_equals_meta_chat_completion(llama2, i):
    case = CASES[i]
    assert encode_prompt(llama2, case["dialog"]) == case["prompt_ids"]


@pytest.mark.parametrize("i", [i for i, c in enumerate(CASES) if any(m["role"] == "assistant" for m in c["dialog"])])
def test_training_dialog_is_the_reference_prefix(llama2, sp, i):
    """A training dialog (ending with an answer) is the reference prompt of that dialog plus one more
    user turn, minus that turn; its mask covers exactly the answers; prompt + response is the dialog."""
    dialog, ref = CASES[i]["dialog"], CASES[i]["prompt_ids"]
    enc = encode_dialog(llama2, dialog[:-1])
    last = [1] + sp.encode(f"[INST] {dialog[-1]['content'].strip()} [/INST]")
    assert enc.input_ids + last == ref
    answers = [m["content"].strip() for m in dialog if m["role"] == "assistant"]
    trained = [t for t, m in zip(enc.input_ids, enc.loss_mask) if m]
    assert trained == [t for a in answers for t in sp.encode(f"{a} ") + [2]]
    assert encode_prompt(llama2, dialog[:-2]) + encode_response(llama2, dialog[-2]["content"]) == enc.input_ids


@pytest.mark.skipif(not os.environ.get("META_LLAMA_REPO"), reason="META_LLAMA_REPO (meta-llama/llama checkout) unset")
def test_fixture_matches_a_fresh_run_of_the_reference():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_ref", FIXTURES / "make_llama2_chat_reference.py")
    make_ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_ref)
    fresh = make_ref.reference_prompt_ids(os.environ["META_LLAMA_REPO"], make_ref.DIALOGS)
    assert fresh == [c["prompt_ids"] for c in CASES]


@pytest.mark.parametrize("text", TEXTS)
def test_encode_equals_sentencepiece(llama2, sp, text):
    assert llama2.encode(text) == sp.encode(text)
    assert llama2.decode(llama2.encode(text)) == sp.decode(sp.encode(text))


@settings(max_examples=300, deadline=None)
@given(st.text(st.sampled_from(list(" \n\t0123456789abcXYZ.,!?-éü✓日😀[]<>/"))
               | st.characters(exclude_categories=("Cs",)), max_size=40))
def test_encode_equals_sentencepiece_property(llama2, sp, text):
    assert llama2.encode(text) == sp.encode(text)
