import pytest

from llama_rlhf.data.chat import B_INST, E_INST, ChatFormatError, encode_dialog, encode_prompt, render
from llama_rlhf.tokenizer import load_tokenizer, shipped_corpus, train_tokenizer

TEXTS = ["What is 3 plus 4? The answer is 7.", "Reverse: red blue green", "Hello,  world!\nNew line ✓ ünï"]


def test_train_is_deterministic_and_fast(tmp_path, tiny_tokenizer):
    import time

    t = time.perf_counter()
    train_tokenizer(shipped_corpus(), tmp_path, vocab_size=1024)
    assert time.perf_counter() - t < 10
    assert (tmp_path / "tokenizer.model").read_bytes() == (tiny_tokenizer.folder / "tokenizer.model").read_bytes()


def test_special_ids_defined_once(tiny_tokenizer):
    t = tiny_tokenizer
    assert (t.pad_id, t.bos_id, t.eos_id) == (0, 1, 2)
    assert t.sep_id == t.eos_id  # default tokenizer.sep_token = "</s>"
    for marker in (B_INST, E_INST):  # template markers are single pieces (after sentencepiece's dummy space)
        assert t.encode(marker) == [t.encode(" ")[0], t.sp.piece_to_id(marker)]


def test_save_load_round_trip(tmp_path, tiny_tokenizer):
    saved = tiny_tokenizer.save(tmp_path / "folder")
    for loaded in (load_tokenizer(saved), load_tokenizer(saved / "tokenizer.model")):
        assert loaded.vocab_size == tiny_tokenizer.vocab_size
        for s in TEXTS:
            ids = loaded.encode(s)
            assert ids == tiny_tokenizer.encode(s)
            assert loaded.decode(ids) == s  # byte fallback: nothing is lost


def test_unknown_sep_token_is_a_config_error(tiny_tokenizer):
    with pytest.raises(ValueError, match="tokenizer.sep_token"):
        load_tokenizer(tiny_tokenizer.folder, sep_token="<no-such-token>")


def test_missing_tokenizer_path_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.path"):
        load_tokenizer(tmp_path / "nope.model")


def test_two_turn_dialog_masks_exactly_the_assistant_tokens(tiny_tokenizer):
    t = tiny_tokenizer
    dialog = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 3 plus 4?"},
        {"role": "assistant", "content": "The answer is 7."},
        {"role": "user", "content": "And 5 plus 5?"},
        {"role": "assistant", "content": "It is 10."},
    ]
    enc = encode_dialog(t, dialog)
    # Built by hand from the Llama 2 reference format, piece by piece (the answer closes with a space token;
    # sentencepiece never merges across a space, so the pieces equal the whole exchange encoded at once).
    p1 = [t.bos_id] + t.encode("[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nWhat is 3 plus 4? [/INST]")
    a1 = t.encode("The answer is 7. ") + [t.eos_id]
    p2 = [t.bos_id] + t.encode("[INST] And 5 plus 5? [/INST]")
    a2 = t.encode("It is 10. ") + [t.eos_id]
    whole = "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nWhat is 3 plus 4? [/INST] The answer is 7. "
    assert p1 + a1 == [t.bos_id] + t.encode(whole) + [t.eos_id]
    assert enc.input_ids == p1 + a1 + p2 + a2
    assert enc.loss_mask == [0] * len(p1) + [1] * len(a1) + [0] * len(p2) + [1] * len(a2)
    trained = [i for i, m in zip(enc.input_ids, enc.loss_mask) if m]
    assert t.decode(trained) == "The answer is 7.  It is 10. "
    # Ghost Attention trains only the last turn
    last = encode_dialog(t, dialog, train_turns={1})
    assert last.loss_mask == [0] * (len(p1) + len(a1) + len(p2)) + [1] * len(a2)
    # the generation prompt is exactly the training prefix
    assert encode_prompt(t, dialog[:-1]) == p1 + a1 + p2
    assert render(dialog).startswith("<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nWhat is 3 plus 4? [/INST] The")


@pytest.mark.parametrize(
    "bad, where",
    [
        ([{"role": "assistant", "content": "hi"}], r"messages\[0\]\.role: expected 'user'"),
        ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], r"messages\[1\]\.role"),
        ([{"role": "user", "content": 3}], r"messages\[0\]\.content"),
        ([{"role": "bot", "content": "x"}], r"messages\[0\]\.role: must be one of"),
    ],
)
def test_malformed_dialogs_are_named(tiny_tokenizer, bad, where):
    with pytest.raises(ChatFormatError, match=where):
        encode_dialog(tiny_tokenizer, bad + [{"role": "assistant", "content": "x"}])
