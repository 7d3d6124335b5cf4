"""Real preference formats: HH-RLHF transcripts (a real sample, loaded strictly), UltraFeedback-style
message lists with scores, PKU-SafeRLHF-style per-response safety labels."""

import json
from collections import Counter
from pathlib import Path

import pytest

from llama_rlhf.data.formats import PreferenceOptions, parse_hh_transcript, rating_from_gap
from llama_rlhf.data.loaders import DataError, load_preferences

HH_SAMPLE = Path(__file__).parent / "fixtures" / "hh_rlhf" / "harmless_base_test_sample.jsonl"


def test_real_hh_sample_loads_strictly_with_its_quirks_counted():
    prefs, report = load_preferences(HH_SAMPLE)
    print(report)
    assert report.loaded == 8 and report.skipped == 0
    assert report.quirks == {"same-role turns merged": 7, "empty turns kept": 1}
    assert "7 same-role turns merged" in str(report)
    assert prefs[3].chosen == "" and prefs[3].rejected  # an empty chosen answer is kept, not dropped
    # "Human:" written inside a turn without its blank line: the two assistant pieces become one answer
    assert prefs[6].messages[-1]["content"] == "Isn't that drag kings?"
    assert prefs[6].chosen.startswith("No. Men who") and prefs[6].chosen.endswith("I think they call them that because")
    for p in prefs:
        roles = [m["role"] for m in p.messages]
        assert roles == ["user", "assistant"] * (len(roles) // 2) + ["user"]


def test_hh_transcript_quirks():
    text = "\n\nHuman: a\n\nHuman: b\n\nAssistant: c\n\nHuman: d\n\nAssistant:"
    quirks = Counter()
    msgs = parse_hh_transcript(text, "f:1", "chosen", quirks)
    assert msgs == [{"role": "user", "content": "a\n\nb"}, {"role": "assistant", "content": "c"},
                    {"role": "user", "content": "d"}, {"role": "assistant", "content": ""}]
    assert quirks == {"same-role turns merged": 1, "empty turns kept": 1}
    with pytest.raises(DataError, match="f:1: field 'chosen': not an HH transcript"):
        parse_hh_transcript("no turns here", "f:1", "chosen")


def test_hh_pair_differing_before_the_last_answer_is_cut_and_counted(tmp_path):
    row = {"chosen": "\n\nHuman: q\n\nAssistant: good\n\nHuman: more\n\nAssistant: x",
           "rejected": "\n\nHuman: q\n\nAssistant: bad\n\nHuman: more\n\nAssistant: y"}
    path = tmp_path / "hh.jsonl"
    path.write_text(json.dumps(row) + "\n")
    (p,), report = load_preferences(path)
    assert (p.messages, p.chosen, p.rejected) == ([{"role": "user", "content": "q"}], "good", "bad")
    assert report.quirks == {"pairs cut at their first differing answer": 1}


def _ultrafeedback(score_chosen, score_rejected):
    prompt = [{"role": "user", "content": "Name a prime."}]
    return {"prompt": "Name a prime.", "chosen": prompt + [{"role": "assistant", "content": "7"}],
            "rejected": prompt + [{"role": "assistant", "content": "8"}],
            "score_chosen": score_chosen, "score_rejected": score_rejected}


@pytest.mark.parametrize("gap, level", [(5, "significantly_better"), (3, "significantly_better"),
                                        (2.5, "better"), (1, "slightly_better"), (0.5, "negligibly_better"),
                                        (0, "negligibly_better")])
def test_rating_from_score_gap(gap, level):
    assert rating_from_gap(gap, (3.0, 2.0, 1.0)) == level


def test_ultrafeedback_message_lists_with_scores(tmp_path):
    path = tmp_path / "uf.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [_ultrafeedback(9, 2), _ultrafeedback(6.5, 5)]))
    prefs, _ = load_preferences(path)
    assert [(p.chosen, p.rejected) for p in prefs] == [("7", "8")] * 2
    assert [p.rating for p in prefs] == ["significantly_better", "slightly_better"]
    prefs, _ = load_preferences(path, opts=PreferenceOptions(gap_thresholds=(8.0, 6.0, 1.6)))
    assert [p.rating for p in prefs] == ["better", "negligibly_better"]
    path.write_text(json.dumps(_ultrafeedback(2, 9)) + "\n")
    with pytest.raises(DataError, match=r"uf.jsonl:1: field 'score_chosen': lower than 'score_rejected'"):
        load_preferences(path)


def test_pku_style_per_response_safety_labels(tmp_path):
    row = {"prompt": "How do I pick a lock?", "response_0": "Here is how: ...", "response_1": "I can't help.",
           "is_response_0_safe": False, "is_response_1_safe": True, "better_response_id": 0,
           "safer_response_id": 1}
    path = tmp_path / "pku.jsonl"
    path.write_text(json.dumps(row) + "\n")
    (helpful,), _ = load_preferences(path)
    assert (helpful.chosen, helpful.chosen_safe, helpful.rejected_safe) == ("Here is how: ...", False, True)
    (safe,), _ = load_preferences(path, opts=PreferenceOptions(is_safety=True, safety_first=True))
    assert (safe.chosen, safe.chosen_safe, safe.rejected_safe, safe.is_safety) == ("I can't help.", True, False, True)
    path.write_text(json.dumps({**row, "better_response_id": 2}) + "\n")
    with pytest.raises(DataError, match="pku.jsonl:1: field 'better_response_id': must be 0 or 1"):
        load_preferences(path)
