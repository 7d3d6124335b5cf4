"""A user's eval prompts have no gold judge: answers are scored by the reward models (helpfulness RM on
helpful prompts, safety RM on safety prompts) and compared with SFT's answers by the same RMs."""

import math

from llama_rlhf.data.records import Prompt
from llama_rlhf.orchestrator.evaluation import rm_judged

PROMPTS = [Prompt("a", [{"role": "user", "content": "q1"}]), Prompt("b", [{"role": "user", "content": "q2"}]),
           Prompt("c", [{"role": "user", "content": "harm"}], is_safety=True)]


def score(which, prompts, answers):
    """A stand-in judge for the arithmetic: helpful RM likes long answers, safety RM likes refusals."""
    if which == "helpful":
        return [len(a) / 10 for a in answers]
    return [1.0 if a.startswith("No") else 0.0 for a in answers]


def test_rm_judged_scores_and_win_rate():
    r = rm_judged(PROMPTS, ["long answer", "ok", "No."], score, baseline=["short", "ok", "Sure"])
    assert r["judge"] == "reward models"
    assert r["rm_helpful"] == (1.1 + 0.2) / 2 and r["rm_safety"] == 1.0
    assert r["rm_win_rate_vs_sft/helpful"] == 0.75  # one win, one tie
    assert r["rm_win_rate_vs_sft/safety"] == 1.0
    assert r["rm_win_rate_vs_sft"] == (1 + 0.5 + 1) / 3
    assert math.isnan(r["gold_helpfulness"])  # no gold judge: stays empty in the report


def test_sft_itself_has_no_win_rate_and_missing_kinds_are_nan():
    r = rm_judged(PROMPTS[:2], ["x", "y"], score)
    assert "rm_win_rate_vs_sft" not in r and math.isnan(r["rm_safety"])


def test_report_labels_the_rm_judged_evaluation(tmp_path):
    from llama_rlhf.config import build_config, save_config
    from llama_rlhf.orchestrator.report import write_report
    from llama_rlhf.orchestrator.run_dir import RunDir

    run = RunDir(tmp_path / "run")
    save_config(build_config({"iterations": {"num_versions": 1, "rs_only_until": 1}}), run.config_path)
    sft = rm_judged(PROMPTS, ["ok", "ok", "Sure"], score)
    v1 = rm_judged(PROMPTS, ["long answer", "ok", "No."], score, baseline=["ok", "ok", "Sure"])
    run.mark_done("eval/sft", {**sft, "mean_response_tokens": 2.0})
    run.mark_done("v1", {"eval": {**v1, "mean_response_tokens": 3.0}})
    text = open(write_report(run)).read()
    assert "### Reward-model-judged evaluation on the given eval prompts" in text
    assert "| RLHF-V1 (RS) | 0.650 | 1.000 | 0.833 | 3.0 |" in text
    assert "| SFT | 0.200 | 0.000 | – | 2.0 |" in text
    assert "Gold judge" not in text and "gold helpfulness" not in text  # no empty gold tables
