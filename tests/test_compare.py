"""`llama-rlhf compare`: several runs' gold figures side by side with their mean and range, the config keys
that differ, and the GAtt figure from the run's largest `gatt_N<N>.json` where there is one."""

from __future__ import annotations

import json

import pytest

from llama_rlhf.cli import main
from llama_rlhf.config import build_config, save_config
from llama_rlhf.orchestrator.compare import compare, config_differences, gatt_file, run_figures
from llama_rlhf.orchestrator.run_dir import RunDir, RunDirError


def _eval(help_scores: list[float], safety: float, gatt_last: float, greedy: float, refusals: float = 0.1) -> dict:
    per = {f"p{i}": h for i, h in enumerate(help_scores)}
    return {"gold_helpfulness": sum(help_scores) / len(help_scores), "gold_safety": safety, "false_refusal": refusals,
            "per_prompt": {"helpfulness": per}, "greedy": {"gold_helpfulness": greedy},
            "gatt": {"kept": [1.0, gatt_last]}}


def _run(path, seed: int, v1_help: list[float], gatt_files: dict | None = None) -> RunDir:
    run = RunDir(path)
    save_config(build_config({"run": {"seed": seed}, "data": {"seed": 0},
                              "iterations": {"num_versions": 1, "rs_only_until": 1}}), run.config_path)
    run.mark_done("eval/sft", _eval([0.2, 0.4], 0.8, 0.0, 0.5))
    run.mark_done("v1", {"eval": _eval(v1_help, 0.9, 0.25, 0.45, refusals=0.01 * seed)})
    for n, results in (gatt_files or {}).items():
        (run.root / f"gatt_N{n}.json").write_text(json.dumps(results))
    return run


def test_config_differences_lists_only_keys_that_differ():
    a = {"run": {"seed": 0, "name": "x"}, "ppo": {"lr": 1e-5}}
    b = {"run": {"seed": 7, "name": "x"}, "ppo": {"lr": 1e-5}, "gatt": {"on": True}}
    assert config_differences([a, b]) == {"gatt.on": [None, True], "run.seed": [0, 7]}


def test_runs_side_by_side_with_mean_and_range(tmp_path):
    one = _run(tmp_path / "a", 0, [0.3, 0.5])
    two = _run(tmp_path / "b", 7, [0.2, 0.4], gatt_files={32: {"RLHF-V1 (RS)": {"gatt": {"kept": [0.9, 0.5]}}},
                                                          128: {"RLHF-V1 (RS)": {"gatt": {"kept": [0.9, 0.75]}}}})
    f = run_figures(two, gatt_file(two))
    assert f["RLHF-V1 (RS)"]["gatt"] == 0.75 and f["SFT"]["gatt"] is None  # N=128 file, SFT not in it
    assert gatt_file(one) is None and run_figures(one, None)["RLHF-V1 (RS)"]["delta"] == pytest.approx(0.1)
    text = compare([one.root, two.root])
    assert "`run.seed` 0 / 7" in text and "`data.seed`" not in text
    assert f"| run 2 | {two.root} | 7 | 0 | 128 |" in text
    assert "| RLHF-V1 (RS) | 0.400 | 0.300 | 0.350 | 0.300 – 0.400 |" in text  # helpfulness
    assert "| RLHF-V1 (RS) | +0.100 | +0.000 | +0.050 | +0.000 – +0.100 |" in text  # paired Δ vs SFT
    assert "| RLHF-V1 (RS) | 0.25 | 0.75 | 0.50 | 0.25 – 0.75 |" in text  # GAtt: run's own, then N=128
    assert "| SFT | 0.800 | 0.800 | 0.800 | 0.800 – 0.800 |" in text
    assert "### false refusals on benign prompts" in text
    assert "| RLHF-V1 (RS) | 0.000 | 0.070 | 0.035 | 0.000 – 0.070 |" in text


def test_a_run_without_an_sft_evaluation_is_refused(tmp_path, capsys):
    run = RunDir(tmp_path / "x")
    save_config(build_config({}), run.config_path)
    with pytest.raises(RunDirError, match="no gold evaluation of SFT"):
        run_figures(run, None)
    ok = _run(tmp_path / "a", 0, [0.3, 0.5])
    assert main(["compare", str(ok.root), str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("llama-rlhf: error:") and "missing" in err and "\n" not in err
    assert main(["compare", str(ok.root), str(ok.root)]) == 0
    assert "Config keys that differ: none." in capsys.readouterr().out
