"""`llama-rlhf branch RUN NEW --after-version K`: a new run folder holding RUN as it stood after RLHF-V`K`, for
`llama-rlhf resume NEW [overrides]`; RUN untouched, bad requests one-line errors."""

from __future__ import annotations

import json
import os

import pytest

from llama_rlhf.algorithms.rejection import RejectionArchive
from llama_rlhf.cli import main
from llama_rlhf.config import build_config, load_config, save_config
from llama_rlhf.orchestrator.branch import branch, stage_version
from llama_rlhf.orchestrator.run_dir import RunDir, RunDirError

STAGES = ["sft", "eval/sft", "collect/sft", "rm_helpful", "rm_safety", "baselines", "v1", "v2", "v3", "wall_seconds"]


def _run(root) -> RunDir:
    run = RunDir(root)
    save_config(build_config({"iterations": {"num_versions": 3, "rs_only_until": 2}}), run.config_path)
    for s in STAGES:
        run.mark_done(s, {"stage": s})
    for s in ("sft", "eval/sft", "v1/rs", "v2/rs", "v3/rs", "v3/ppo"):
        run.log(s, 0, {"loss": 1.0}, tensorboard=False)
    archive = RejectionArchive()
    for it in (1, 2, 3):
        for pid in ("a", "b"):
            archive.add(it, pid, [{"role": "user", "content": pid}], f"{pid}{it}", float(it))
    archive.save(run.data("rs_archive.json"))
    for name in ("sft", "rm_helpful", "baseline_random_pick", "v1", "v2", "rm_helpful_v2", "v3_rs", "v3",
                 "rm_safety_v3", "v3_ppo_state"):
        (run.ckpt(name)).mkdir()
        (run.ckpt(name) / "model.safetensors").write_text(name)
    for name in ("preferences_v0.jsonl", "preferences_v2.jsonl", "preferences_v3.jsonl", "rs_samples_v1.jsonl",
                 "rs_samples_v3.jsonl"):
        run.data(name).write_text("{}\n")
    for name in ("report.md", "actors.json", "gatt_N128.json", "plots/gold_scores.png"):
        (run.root / name).write_text("x")
    return run


def test_stage_version_reads_stages_checkpoints_and_files():
    assert [stage_version(n) for n in ("sft", "rm_helpful", "baseline_random_pick", "eval/sft", "collect/sft",
                                       "preferences_v0.jsonl")] == [0] * 6
    assert [stage_version(n) for n in ("v1", "v12", "v3_rs", "v3_ppo_state", "v2/rs", "rm_safety_v4",
                                       "preferences_v2.jsonl", "rs_samples_v5.jsonl")] == [1, 12, 3, 3, 2, 4, 2, 5]


def test_branch_keeps_the_run_as_it_stood_after_a_version(tmp_path):
    src = _run(tmp_path / "runs" / "local")
    before = sorted(str(p.relative_to(src.root)) for p in src.root.rglob("*"))
    kept = branch(src.root, tmp_path / "runs" / "try", 1)
    assert sorted(str(p.relative_to(src.root)) for p in src.root.rglob("*")) == before  # RUN untouched
    new = RunDir(tmp_path / "runs" / "try")
    assert kept == {"stages": STAGES[:7], "archive_samples": 2} and new.state()["done"] == STAGES[:7]
    assert set(new.state()["results"]) == set(STAGES[:7])
    assert sorted(p.name for p in (new.root / "ckpt").iterdir()) == ["baseline_random_pick", "rm_helpful", "sft", "v1"]
    assert sorted(p.name for p in (new.root / "data").iterdir()) == ["preferences_v0.jsonl", "rs_archive.json",
                                                                      "rs_samples_v1.jsonl"]
    assert not any((new.root / n).exists() for n in ("report.md", "actors.json", "gatt_N128.json"))
    assert list((new.root / "plots").iterdir()) == []
    assert [m["stage"] for m in new.metrics()] == ["sft", "eval/sft", "v1/rs"]
    samples = RejectionArchive.load(new.data("rs_archive.json")).samples()
    assert [(s.iteration, s.prompt_id, s.response) for s in samples] == [(1, "a", "a1"), (1, "b", "b1")]
    v1 = new.ckpt("v1") / "model.safetensors"
    assert v1.read_text() == "v1" and os.stat(v1).st_ino == os.stat(src.ckpt("v1") / "model.safetensors").st_ino
    cfg = load_config(new.config_path)
    assert cfg.run.name == "try" and cfg.run.output_dir == str(tmp_path / "runs")
    assert branch(src.root, tmp_path / "zero", 0) == {"stages": STAGES[:6], "archive_samples": 0}
    assert RejectionArchive.load(tmp_path / "zero" / "data" / "rs_archive.json").samples() == []


def test_branch_refusals_are_one_line_errors(tmp_path, capsys):
    src = _run(tmp_path / "run")
    with pytest.raises(RunDirError, match=r"must be one of \[0, 1, 2, 3\]"):
        branch(src.root, tmp_path / "x", 4)
    assert not (tmp_path / "x").exists()
    (tmp_path / "taken").mkdir()
    assert main(["branch", str(src.root), str(tmp_path / "taken"), "--after-version", "1"]) == 2
    assert main(["branch", str(tmp_path / "nothing"), str(tmp_path / "y"), "--after-version", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "already exists" in err[0] and "not a run folder" in err[1]
    assert main(["branch", str(src.root), str(tmp_path / "ok"), "--after-version", "2"]) == 0
    assert json.loads((tmp_path / "ok" / "state.json").read_text())["done"] == STAGES[:8]
    assert "llama-rlhf resume" in capsys.readouterr().out
