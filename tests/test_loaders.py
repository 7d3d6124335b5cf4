import json

import pytest

from llama_rlhf.data.loaders import DataError, load_preferences, load_prompts, load_sft, write_jsonl


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_sft_shapes(tmp_path):
    p = _write(tmp_path / "sft.jsonl", [
        {"prompt": "Hi", "response": "Hello!"},
        {"prompt": "Hi", "completion": "Hey", "system": "Be nice."},
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
    ])
    recs, rep = load_sft(p)
    assert rep.loaded == 3 and rep.skipped == 0
    assert recs[0].messages[-1] == {"role": "assistant", "content": "Hello!"}
    assert recs[1].messages[0] == {"role": "system", "content": "Be nice."}


def test_preferences_with_rating_and_hh_transcripts(tmp_path):
    p = _write(tmp_path / "prefs.jsonl", [
        {"prompt": "q", "chosen": "good", "rejected": "bad", "rating": "significantly better", "is_safety": True},
        {"chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant: like this",
         "rejected": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant: no"},
    ])
    recs, _ = load_preferences(p)
    assert recs[0].rating == "significantly_better" and recs[0].is_safety
    hh = recs[1]
    assert [m["role"] for m in hh.messages] == ["user", "assistant", "user"]
    assert (hh.chosen, hh.rejected, hh.rating) == ("like this", "no", "negligibly_better")


def test_prompts(tmp_path):
    p = _write(tmp_path / "prompts.jsonl", [{"prompt": "x", "is_safety": True, "id": "a"}, {"prompt": "y"}])
    recs, _ = load_prompts(p)
    assert recs[0].id == "a" and recs[0].is_safety and recs[1].id == f"{p}:2" and not recs[1].is_safety


@pytest.mark.parametrize(
    "loader, good, bad, message",
    [
        (load_sft, {"prompt": "a", "response": "b"}, {"prompt": "a"}, r"field 'response': missing"),
        (load_sft, {"prompt": "a", "response": "b"}, {"prompt": 3, "response": "b"}, r"field 'prompt': must be str"),
        (load_preferences, {"prompt": "a", "chosen": "b", "rejected": "c"},
         {"prompt": "a", "chosen": "b", "rejected": "c", "rating": "meh"}, r"field 'rating': must be one of"),
        (load_preferences, {"prompt": "a", "chosen": "b", "rejected": "c"},
         {"chosen": "b", "rejected": "c"}, r"field 'chosen': not an HH transcript"),
        (load_prompts, {"prompt": "a"}, {"prompt": "a", "is_safety": "yes"}, r"field 'is_safety': must be true/false"),
        (load_prompts, {"prompt": "a"}, '{"prompt": "a",', r"invalid JSON"),
        (load_prompts, {"prompt": "a"}, {"messages": [{"role": "assistant", "content": "x"}]},
         r"field 'messages': messages\[0\]\.role"),
    ],
)
def test_malformed_line_is_named_with_file_and_line(tmp_path, loader, good, bad, message):
    p = _write(tmp_path / "data.jsonl", [good, good, bad, good])
    with pytest.raises(DataError, match=rf"{p}:3: {message}"):
        loader(p)
    # explicit skip_invalid counts and reports; nothing else is lost
    recs, rep = loader(p, skip_invalid=True)
    assert (rep.loaded, rep.skipped, len(recs)) == (3, 1, 3)
    assert rep.errors[0].startswith(f"{p}:3:") and "1 invalid skipped" in str(rep)


def test_round_trip_and_hf_datasets_folder(tmp_path):
    import datasets

    recs, _ = load_preferences(_write(tmp_path / "p.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}] * 3))
    write_jsonl(tmp_path / "again.jsonl", recs)
    assert load_preferences(tmp_path / "again.jsonl")[0] == recs
    rows = [{"prompt": "q", "chosen": "a", "rejected": "b", "rating": 1, "is_safety": False}] * 2
    rows.append({"prompt": "q", "chosen": "a", "rejected": "b", "rating": 9, "is_safety": False})
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(DataError, match=r"ds row 2: field 'rating'"):
        load_preferences(tmp_path / "ds")
    assert load_preferences(tmp_path / "ds", skip_invalid=True)[0][0].rating == "better"


def test_missing_source(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_sft(tmp_path / "nope.jsonl")
