"""The paper's RM data mix (section 3.2.2), one implementation, from each pair's source role."""

import json

import pytest

from llama_rlhf.config import ConfigError, build_config
from llama_rlhf.data.mix import label_of, mix_counts, mix_metrics, mix_report, reward_model_mix
from llama_rlhf.data.records import Preference
from llama_rlhf.orchestrator.datasets import load_datasets


def _prefs(source: str, role: str, n: int, is_safety: bool = False) -> list[Preference]:
    return [Preference([{"role": "user", "content": f"{source} {i}"}], "a", "b", is_safety=is_safety,
                       source=source, mix_role=role) for i in range(n)]


SOURCES = (_prefs("meta_help", "helpfulness", 100) + _prefs("meta_safe", "safety", 40, True)
           + _prefs("hh_harmless", "harmless", 30, True) + _prefs("hh_helpful", "open_source", 50)
           + _prefs("shp", "open_source", 25))


def test_helpful_rm_all_helpfulness_plus_equal_parts_of_safety_and_open_source():
    c = mix_counts(SOURCES, "helpful")
    assert c["meta_help [helpfulness]"] == 100
    # 100 more in equal parts: 50 from Meta Safety (of 40: all 40, the open-source side makes up 10)
    assert c["meta_safe [safety]"] == 40
    open_side = {k: v for k, v in c.items() if "harmless" in k or "open_source" in k}
    assert sum(open_side.values()) == 60
    # the open-source part in proportion to size: 30/105, 50/105, 25/105 of 60
    assert open_side == {"hh_harmless [harmless]": 17, "hh_helpful [open_source]": 29, "shp [open_source]": 14}


def test_safety_rm_all_safety_and_harmless_plus_helpfulness_90_10():
    c = mix_counts(SOURCES, "safety")
    assert c["meta_safe [safety]"] == 40 and c["hh_harmless [harmless]"] == 30
    helpful_side = c["meta_help [helpfulness]"] + c["hh_helpful [open_source]"] + c["shp [open_source]"]
    assert helpful_side == round(70 / 9) == 8  # 10% of the mix
    assert helpful_side / sum(c.values()) == pytest.approx(0.1, abs=0.01)


def test_world_without_roles_splits_by_is_safety_with_one_rounding():
    prefs = _prefs("world", "", 95) + _prefs("world", "", 41, True)
    assert mix_counts(prefs, "helpful") == {"world [helpfulness]": 95, "world [safety]": 41}
    assert mix_counts(prefs, "safety") == {"world [safety]": 41, "world [helpfulness]": round(41 / 9)}
    short = mix_report(_prefs("h", "helpfulness", 2) + _prefs("s", "safety", 90, True))
    assert short == ["helpful RM mix: 4 pairs = h [helpfulness] 2, s [safety] 2",
                     "safety RM mix: 92 pairs = s [safety] 90, h [helpfulness] 2 (mixed-in part short: 2 of 10 wanted)"]


def test_mix_draws_the_counted_pairs_deterministically():
    for target in ("helpful", "safety"):
        mix = reward_model_mix(SOURCES, target, seed=3)
        counts = {}
        for p in mix:
            counts[label_of(p)] = counts.get(label_of(p), 0) + 1
        assert counts == {k: v for k, v in mix_counts(SOURCES, target).items() if v}
        assert len({id(p) for p in mix}) == len(mix)
        assert [p.messages for p in mix] == [p.messages for p in reward_model_mix(SOURCES, target, seed=3)]
    with pytest.raises(ValueError, match="reward model"):
        reward_model_mix(SOURCES, "helpfulness", 0)


def test_multi_source_config_reports_the_mix(tmp_path):
    def write(name, n, extra=None):
        path = tmp_path / name
        rows = [{"prompt": f"q{i}", "chosen": "good", "rejected": "bad", **(extra or {})} for i in range(n)]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return str(path)

    cfg = build_config({"data": {"preferences": [
        {"path": write("help.jsonl", 20), "kind": "helpfulness", "name": "help"},
        {"path": write("safe.jsonl", 9), "kind": "safety", "name": "safe"},
        {"path": write("open.jsonl", 30), "kind": "open_source", "name": "open"},
    ], "world": {"n_sft": 8, "n_preferences": 8, "n_rlhf": 4, "n_eval": 4, "n_gatt_dialogs": 0}}})
    d = load_datasets(cfg)
    assert [p.is_safety for p in d.preferences].count(True) == 9  # the safety source's default
    lines = [r for r in d.reports if "RM mix" in r]
    print("\n".join(lines))
    assert lines == mix_report(d.preferences)
    assert lines[0] == "helpful RM mix: 40 pairs = help [helpfulness] 20, safe [safety] 9, open [open_source] 11"
    assert lines[1] == "safety RM mix: 10 pairs = safe [safety] 9, open [open_source] 1"


def test_preferences_and_preference_path_are_exclusive():
    with pytest.raises(ConfigError, match="data.preferences"):
        build_config({"data": {"preferences": [{"path": "a.jsonl"}], "preference_path": "b.jsonl"}})
    with pytest.raises(ConfigError, match="kind"):
        build_config({"data": {"preferences": [{"path": "a.jsonl", "kind": "both"}]}})


def test_mix_metric_keys_are_tensorboard_tags():
    assert mix_metrics({"data/hh v1.jsonl [harmless]": 3}) == {"mix/data/hh_v1.jsonl/harmless": 3}


def test_held_out_rm_eval_pairs_leave_training_and_the_mix(tmp_path):
    """`data.rm_eval_pairs`: n pairs per RM (its own side) held out of the sources, out of the mix too."""
    def write(name, n):
        path = tmp_path / name
        path.write_text("".join(json.dumps({"prompt": f"{name} q{i}", "chosen": "good", "rejected": "bad"}) + "\n"
                                for i in range(n)))
        return str(path)

    world = {"n_sft": 8, "n_preferences": 8, "n_rlhf": 4, "n_eval": 4, "n_gatt_dialogs": 0}
    prefs = [{"path": write("help.jsonl", 12), "kind": "helpfulness", "name": "help"},
             {"path": write("harm.jsonl", 10), "kind": "harmless", "name": "harm"}]
    d = load_datasets(build_config({"data": {"preferences": prefs, "rm_eval_pairs": 4, "world": world}}))
    assert [len(d.rm_eval[k]) for k in ("helpful", "safety")] == [4, 4]
    assert not any(p.is_safety for p in d.rm_eval["helpful"]) and all(p.is_safety for p in d.rm_eval["safety"])
    held = {p.messages[0]["content"] for ps in d.rm_eval.values() for p in ps}
    assert len(d.preferences) == 14 and not held & {p.messages[0]["content"] for p in d.preferences}
    assert "helpful RM mix: 14 pairs = help [helpfulness] 8, harm [harmless] 6 (mixed-in part short: 6 of 8 " \
           "wanted)" in d.reports
    with pytest.raises(ConfigError, match=r"data.rm_eval_pairs: 10 held out per RM leaves no safety RM"):
        load_datasets(build_config({"data": {"preferences": prefs, "rm_eval_pairs": 10, "world": world}}))
