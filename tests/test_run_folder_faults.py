"""Run folders: `run` refuses a folder holding another config, torn metrics lines are tolerated on
resume, disk-full / permission errors are one line and leave committed checkpoints intact."""

import errno
import json
import os

import pytest

from llama_rlhf.cli import main
from llama_rlhf.config import load_config, save_config
from llama_rlhf.orchestrator import run_dir as run_dir_mod
from llama_rlhf.orchestrator.preflight import check_run_folder
from llama_rlhf.orchestrator.run_dir import RunDir, RunDirError


def test_run_refuses_a_folder_with_another_config(tmp_path, capsys):
    cfg = load_config("configs/ci.yaml", [f"run.output_dir={tmp_path}"])
    root = tmp_path / cfg.run.name
    root.mkdir()
    save_config(cfg, root / "config.yaml")
    check_run_folder(cfg)  # same config: `run` continues it
    text = (root / "config.yaml").read_text().replace("  max_restarts: 2\n", "")
    (root / "config.yaml").write_text(text)
    check_run_folder(cfg)  # written before a field existed: compared at its default
    other = load_config("configs/ci.yaml", [f"run.output_dir={tmp_path}", "ppo.kl_coef=0.5"])
    with pytest.raises(RunDirError, match=r"ppo.kl_coef: 0.01 -> 0.5\); continue it with `llama-rlhf resume"):
        check_run_folder(other)
    rc = main(["run", "configs/ci.yaml", f"run.output_dir={tmp_path}", "ppo.kl_coef=0.5"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "or choose a fresh run.name" in err


def test_torn_metrics_line_is_tolerated_and_counted(tmp_path, capsys):
    run = RunDir(tmp_path / "r")
    run.log("sft", 0, {"loss": 1.0}, tensorboard=False)
    run.log("sft", 1, {"loss": 0.5}, tensorboard=False)
    with (run.root / "metrics.jsonl").open("a") as f:
        f.write('{"stage": "v1/rs", "step": 0, "lo')  # killed mid-write
    assert [r["step"] for r in run.metrics()] == [0, 1]
    run.log("v1/rs", 0, {"loss": 2.0}, tensorboard=False)  # a later row still lands on a line of its own
    assert [r["stage"] for r in run.metrics()] == ["sft", "sft", "v1/rs"]
    assert run.truncate_metrics(["sft"]) == 1
    assert "dropped 1 torn line" in capsys.readouterr().err
    lines = (run.root / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [0, 1]


def test_disk_full_while_saving_keeps_the_committed_checkpoint(tmp_path, monkeypatch):
    run = RunDir(tmp_path / "r")
    (run.staging("sft") / "model.safetensors").write_text("good")
    run.commit("sft")
    staged = run.staging("sft")
    (staged / "model.safetensors").write_text("half")
    real = os.replace

    def full(src, dst):
        if str(src).endswith(".tmp"):
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real(src, dst)

    monkeypatch.setattr(run_dir_mod.os, "replace", full)
    with pytest.raises(OSError, match="No space left"):
        run.commit("sft")
    assert (run.ckpt("sft") / "model.safetensors").read_text() == "good"


def test_unwritable_output_dir_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc = main(["run", "configs/ci.yaml", f"run.output_dir={blocker}/runs"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("llama-rlhf: error: [Errno") and err.count("\n") == 1, err
