"""One world config type: every field of `llama_rlhf.config.WorldConfig` reaches the world and changes it.

Run: .venv/bin/pytest tests/test_world_config.py -q   (pure Python, a few seconds)
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from llama_rlhf.config import WorldConfig, load_config
from llama_rlhf.data.world import build_world

BASE = {"n_sft": 200, "n_preferences": 60, "n_rlhf": 60, "n_eval": 60, "n_gatt_dialogs": 16, "n_gatt_eval": 4,
        "gatt_eval_turns": 3}


def _gatt_turns(prompts) -> int:
    return max(sum(m["role"] == "user" for m in p.messages) for p in prompts if p.kind == "gatt")


# field -> (a non-default value, what of the world it must change)
EFFECTS = {
    "n_sft": (50, lambda w: len(w.sft_records())),
    "n_preferences": (30, lambda w: len(w.preference_records())),
    "n_rlhf": (30, lambda w: len(w.rlhf_prompts())),
    "n_eval": (30, lambda w: len(w.eval_prompts())),
    "n_gatt_dialogs": (5, lambda w: len(w.gatt_dialogs("train"))),
    "n_gatt_eval": (2, lambda w: len(w.gatt_dialogs("eval"))),
    "gatt_min_turns": (6, lambda w: min(len(d.user_turns) for d in w.gatt_dialogs("train"))),
    "gatt_max_turns": (3, lambda w: max(len(d.user_turns) for d in w.gatt_dialogs("train"))),
    "gatt_eval_turns": (5, lambda w: {len(d.user_turns) for d in w.gatt_dialogs("eval")}),
    "gatt_prompt_max_turns": (1, lambda w: _gatt_turns(w.prompts("train", 200, "sft"))),
    "sft_error_rate": (0.5, lambda w: sum(not r.meta["correct"] for r in w.sft_records())),
    "label_noise": (0.4, lambda w: sum(p.meta["flipped"] for p in w.preference_records())),
    "safety_fraction": (0.4, lambda w: sum(p.kind == "unsafe" for p in w.rlhf_prompts())),
    "gatt_fraction": (0.3, lambda w: sum(p.kind == "gatt" for p in w.rlhf_prompts())),
    "list_pool_size": (20, lambda w: len(w.pools["train"]["count"])),
}


def test_every_field_has_an_effect_check():
    assert set(EFFECTS) == set(WorldConfig.model_fields)


@pytest.mark.parametrize("field", sorted(EFFECTS))
def test_every_field_reaches_and_changes_the_world(field):
    value, measure = EFFECTS[field]
    base = WorldConfig(**BASE)
    assert getattr(base, field) != value
    changed = base.model_copy(update={field: value})
    world = build_world(changed, seed=0)
    assert getattr(world.config, field) == value
    assert measure(world) != measure(build_world(base, seed=0)), field


def test_overrides_are_validated_like_the_config():
    assert build_world(n_sft=7).config.n_sft == 7
    with pytest.raises(ValidationError, match="gatt_min_turns"):
        build_world(gatt_min_turns=7)
    with pytest.raises(ValidationError, match="n_sftt"):
        build_world(n_sftt=7)
    with pytest.raises(TypeError, match="WorldConfig"):
        build_world({"n_sft": 7})


def test_load_datasets_passes_the_config_whole():
    from llama_rlhf.orchestrator.datasets import load_datasets

    cfg = load_config("configs/ci.yaml", ["data.world.gatt_prompt_max_turns=1", "data.world.list_pool_size=7",
                                          "run.seed=5"])
    data = load_datasets(cfg)
    assert data.world.config == cfg.data.world and data.world.seed == 5
    assert len(data.world.pools["train"]["count"]) < 6 * 7


def test_data_seed_holds_the_data_while_run_seed_changes():
    """`data.seed` draws the world and the RM held-out split; unset, `run.seed` does. Holding it while the run
    seed changes keeps every record (the run-to-run variance experiment); changing it changes the records."""
    from llama_rlhf.orchestrator.datasets import load_datasets

    def records(*overrides):
        d = load_datasets(load_config("configs/ci.yaml", ["data.rm_eval_pairs=10", *overrides]))
        held = {k: [p.to_dict() for p in v] for k, v in d.rm_eval.items()}
        return d.world.seed, [p.to_dict() for p in d.preferences], held, [p.to_dict() for p in d.eval_prompts]

    base = records("run.seed=3")
    assert base[0] == 3 and all(len(v) == 10 for v in base[2].values()) and base[2]
    assert records("run.seed=8", "data.seed=3") == base
    other = records("run.seed=3", "data.seed=4")
    assert other[0] == 4 and other[1] != base[1] and other[3] != base[3]
