"""The report's Ghost Attention table: the last turn's kept rate carries a 95% bootstrap interval over
dialogs, and the last version trained with GAtt data is compared, paired by dialog, with the last one
without."""

from llama_rlhf.algorithms.bootstrap import mean_ci, paired_diff_ci
from llama_rlhf.config import build_config, save_config
from llama_rlhf.orchestrator.report import gatt_table
from llama_rlhf.orchestrator.run_dir import RunDir


def _gatt(by_dialog: list[list[int]]) -> dict:
    return {"gatt": {"kept": [sum(t) / len(t) for t in by_dialog], "kept_by_dialog": by_dialog,
                     "dropped_exchanges": [0.0] * len(by_dialog), "dialogs": len(by_dialog[0])}}


def _run(tmp_path, results: dict) -> RunDir:
    run = RunDir(tmp_path / "run")
    cfg = {"iterations": {"num_versions": 2, "rs_only_until": 2}, "gatt": {"from_version": 2}}
    save_config(build_config(cfg), run.config_path)
    for stage, r in results.items():
        run.mark_done(stage, r)
    return run


def test_last_turn_has_an_interval_and_the_gatt_gain_is_paired(tmp_path):
    turn2_sft, turn2_v1, turn2_v2 = [0, 0, 1, 0, 0, 0], [1, 0, 0, 0, 1, 0], [1, 1, 1, 0, 1, 1]
    run = _run(tmp_path, {"eval/sft": _gatt([[1] * 6, turn2_sft]),
                          "v1": {"eval": _gatt([[1] * 6, turn2_v1])},
                          "v2": {"eval": _gatt([[1] * 6, turn2_v2])}})
    text = gatt_table(run)
    m, lo, hi = mean_ci(turn2_v2)
    assert f"| RLHF-V2 (RS) | yes | 1.00 | {m:.2f} [{lo:.2f}, {hi:.2f}] |" in text
    m, lo, hi = mean_ci(turn2_v1)
    assert f"| RLHF-V1 (RS) | no | 1.00 | {m:.2f} [{lo:.2f}, {hi:.2f}] |" in text
    d, lo, hi = paired_diff_ci(turn2_v2, turn2_v1)  # the last version without GAtt data is V1, not SFT
    assert f"RLHF-V2 (RS) (GAtt data) vs RLHF-V1 (RS) (none): paired Δ {d:+.3f} [{lo:+.3f}, {hi:+.3f}]" in text
    assert d > 0 and lo < d < hi


def test_runs_saved_without_per_dialog_results_keep_the_plain_table(tmp_path):
    old = {"gatt": {"kept": [1.0, 0.5], "dropped_exchanges": [0.0, 0.0], "dialogs": 2}}
    run = _run(tmp_path, {"eval/sft": old, "v1": {"eval": old}, "v2": {"eval": old}})
    text = gatt_table(run)
    assert "| RLHF-V2 (RS) | yes | 1.00 | 0.50 |" in text and "paired Δ" not in text and "[" not in text


def test_gatt_kept_shares_count_picks_and_all_samples_by_turn():
    from llama_rlhf.orchestrator.rejection import gatt_kept_shares

    # turn 0: 2 dialogs, K=2; turn 1: 1 dialog; a dialog that is not the world's (None) is left out
    kept = {0: [(True, [True, False]), (False, [False, False]), (None, [None, None])], 1: [(True, [True, True])]}
    out = gatt_kept_shares(kept)
    assert out["gatt_kept_picks"] == 2 / 3 and out["gatt_kept_samples"] == 3 / 6
    assert out["gatt_kept_by_turn"] == {1: [0.5, 0.25], 2: [1.0, 1.0]}
    assert gatt_kept_shares({0: [(None, [None])]}) == {} and gatt_kept_shares({}) == {}


def test_gatt_keeps_uses_the_world_checker_and_skips_other_dialogs():
    from types import SimpleNamespace

    from llama_rlhf.orchestrator.rejection import gatt_keeps

    assert gatt_keeps(SimpleNamespace(instruction_id="upper"), "THE ANSWER IS 4.") is True
    assert gatt_keeps(SimpleNamespace(instruction_id="upper"), "The answer is 4.") is False
    assert gatt_keeps(SimpleNamespace(system="Be brief."), "ok") is None


def test_gatt_data_table_lists_versions_with_gatt_data(tmp_path):
    from llama_rlhf.orchestrator.report import body, gatt_data_table

    v2 = {"eval": _gatt([[1, 1], [0, 1]]), "gatt_temperature": 0.7, "gatt_kept_picks": 0.6, "gatt_kept_samples": 0.55,
          "gatt_kept_by_turn": {"1": [0.5, 0.45], "2": [0.7, 0.65]}}
    run = _run(tmp_path, {"eval/sft": _gatt([[1, 1], [0, 0]]), "v1": {"eval": _gatt([[1, 1], [0, 0]])}, "v2": v2})
    text = gatt_data_table(run)
    assert "| RLHF-V2 | 0.7 | 0.600 | 0.550 | 0.50 / 0.45 | 0.70 / 0.65 |" in text and "RLHF-V1 |" not in text
    assert text in "\n".join(body(run))
    old = _run(tmp_path / "old", {"eval/sft": _gatt([[1, 1]]), "v1": {"eval": _gatt([[1, 1]])}})
    assert gatt_data_table(old) == ""


def test_gatt_turn_prompts_for_the_annotators_are_in_the_sampling_form():
    """`gatt.preferences_per_version` turns of the GAtt dialogs: distinct dialogs, a turn of each with the
    gold history, the instruction on every user message, the judge's GAtt meta; the annotators prefer the
    answer that keeps the instruction over the same answer without it."""
    import random
    from types import SimpleNamespace

    from llama_rlhf.config import build_config
    from llama_rlhf.data.world import annotate, build_world
    from llama_rlhf.data.world.gatt import apply, violate
    from llama_rlhf.orchestrator.stages import gatt_turn_prompts

    dialogs = build_world(seed=0).gatt_dialogs("train", 6, 2, 5)
    cfg = build_config({"gatt": {"from_version": 3, "preferences_per_version": 4}})
    ctx = SimpleNamespace(cfg=cfg, data=SimpleNamespace(gatt_dialogs=dialogs))
    assert gatt_turn_prompts(ctx, 2, 4) == [] and gatt_turn_prompts(ctx, 3, 0) == []
    prompts = gatt_turn_prompts(ctx, 3, 4)
    assert prompts == gatt_turn_prompts(ctx, 3, 4) and prompts != gatt_turn_prompts(ctx, 4, 4)
    by_id = {d.id: d for d in dialogs}
    assert len({p.id.rsplit("-t", 1)[0] for p in prompts}) == 4  # distinct dialogs while they last
    for p in prompts:
        d = by_id[p.id.rsplit("-t", 1)[0]]
        turn = p.meta["n_turns"] - 1
        users = [m["content"] for m in p.messages if m["role"] == "user"]
        assert p.kind == "gatt" and p.meta["instruction_id"] == d.instruction_id and p.messages[-1]["role"] == "user"
        assert users == [f"{d.system}\n{u}" for u in d.user_turns[: turn + 1]]
        assert [m["content"] for m in p.messages if m["role"] == "assistant"] == d.gold_responses[:turn]
        pref = annotate(p, violate(d.instruction_id, p.meta["task"]), apply(d.instruction_id, p.meta["task"]),
                        random.Random(0), noise=0.0)
        assert pref.chosen == apply(d.instruction_id, p.meta["task"]) and pref.rating == "better"
    assert len(gatt_turn_prompts(ctx, 3, 9)) == 9  # more than the dialogs: each used again
    off = build_config({"gatt": {"enabled": False, "preferences_per_version": 4}})
    assert gatt_turn_prompts(SimpleNamespace(cfg=off, data=ctx.data), 3, 4) == []
