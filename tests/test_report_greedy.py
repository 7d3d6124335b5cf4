"""Greedy answers judged beside the sampled ones (`eval.greedy`): the report's headline, its Greedy section
and `llama-rlhf eval RUN` show them; runs saved before show what they have."""

from llama_rlhf.algorithms.bootstrap import mean_ci, paired_diff_ci
from llama_rlhf.cli import main
from llama_rlhf.config import build_config, save_config
from llama_rlhf.orchestrator.report import RANDOM_PICK, body
from llama_rlhf.orchestrator.run_dir import RunDir


def _gold(scores: list[float], temperature: float) -> dict:
    m, lo, hi = mean_ci(scores)
    ids = [f"eval-{i:05d}" for i in range(len(scores))]
    return {"temperature": temperature, "gold_helpfulness": m, "gold_helpfulness_ci": [lo, hi],
            "gold_safety": 1.0, "gold_safety_ci": [1.0, 1.0], "false_refusal": 0.0, "false_refusal_ci": [0.0, 0.0],
            "per_prompt": {"helpfulness": dict(zip(ids, scores))}, "mean_response_tokens": 5.0}


def _run(tmp_path, greedy: bool) -> RunDir:
    run = RunDir(tmp_path / "run")
    save_config(build_config({"iterations": {"num_versions": 1, "rs_only_until": 1}}), run.config_path)
    sft, v1, rp = _gold([0.2, 0.4, 0.6, 0.2], 1.0), _gold([0.4, 0.4, 0.6, 0.4], 1.0), _gold([0.2, 0.4, 0.4, 0.2], 1.0)
    if greedy:
        sft["greedy"], v1["greedy"] = _gold([1.0, 1.0, 0.0, 1.0], 0.0), _gold([0.0, 1.0, 0.0, 0.0], 0.0)
        rp["greedy"] = _gold([1.0, 1.0, 0.0, 0.0], 0.0)
    run.mark_done("eval/sft", sft)
    run.mark_done("baselines", {"random_pick": {"eval": rp, "fit": {"train_samples": 4}}})
    run.mark_done("v1", {"eval": v1})
    return run


def test_headline_section_and_eval_command_show_the_greedy_change(tmp_path, capsys):
    run = _run(tmp_path, greedy=True)
    text = "\n".join(body(run))
    d, lo, hi = paired_diff_ci([0.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 1.0])
    assert f"Greedy answers: gold helpfulness 0.250 vs 0.750, paired Δ {d:+.3f} [{lo:+.3f}, {hi:+.3f}]" in text
    section = text.split("### Greedy answers")[1].split("###")[0]
    assert "| SFT | 0.0 | 0.750 [" in section and "| RLHF-V1 (RS) | 0.0 | 0.250 [" in section
    assert f"| {RANDOM_PICK} | 0.0 | 0.500 [" in section and "By prompt kind, greedy" in section
    assert main(["eval", str(run.root)]) == 0
    out = capsys.readouterr().out
    assert "| RLHF-V1 (RS) | 1.0 |" in out and "Greedy answers" in out and "| RLHF-V1 (RS) | 0.0 |" in out


def test_runs_without_greedy_answers_have_no_greedy_section(tmp_path, capsys):
    run = _run(tmp_path, greedy=False)
    text = "\n".join(body(run))
    assert "Greedy" not in text and "| RLHF-V1 (RS) | 1.0 |" in text
    assert main(["eval", str(run.root)]) == 0
    assert "Greedy" not in capsys.readouterr().out


def test_rs_table_counts_mixed_in_sft_demonstrations_only_where_there_are_any(tmp_path):
    from llama_rlhf.orchestrator.report import rs_table

    run = _run(tmp_path, greedy=False)
    assert "SFT demonstrations" not in rs_table(run)
    run.mark_done("v1", {"rs_temperature": 0.7, "train_samples": 6, "sft_mixed_in": 2, "gatt_dialogs": 0})
    run.mark_done("baselines", {"random_pick": {"eval": {}, "fit": {"rs_temperature": 0.7, "train_samples": 6,
                                                                      "sft_mixed_in": 2}}})
    lines = rs_table(run).splitlines()
    assert "| fine-tuning samples | of them SFT demonstrations | GAtt dialogs |" in lines[0]
    assert all(line.count("|") == lines[0].count("|") for line in lines)
    assert "| 0 | 6 | 2 | 0 | 0/0 |" in lines[2] and "| – | 6 | 2 | 0 | – |" in lines[3]
