"""The run folder: atomic checkpoints, the done-list resume reads, metrics truncation, saved data."""

from llama_rlhf.data.loaders import write_jsonl
from llama_rlhf.data.records import Preference
from llama_rlhf.orchestrator.run_dir import RunDir
from llama_rlhf.orchestrator.stages import collected_preferences


def test_checkpoint_is_invisible_until_committed(tmp_path):
    run = RunDir(tmp_path / "r")
    tmp = run.staging("sft")
    (tmp / "model.safetensors").write_text("new")
    assert not run.ckpt("sft").exists()  # a crash here leaves no half-written checkpoint
    run.commit("sft")
    assert (run.ckpt("sft") / "model.safetensors").read_text() == "new" and not tmp.exists()
    # re-running a stage replaces its checkpoint as a whole
    (run.staging("sft") / "other.bin").write_text("x")
    run.commit("sft")
    assert sorted(p.name for p in run.ckpt("sft").iterdir()) == ["other.bin"]


def test_done_list_keeps_order_and_results(tmp_path):
    run = RunDir(tmp_path / "r")
    run.mark_done("sft", {"steps": 3})
    run.mark_done("eval/sft", {"gold": 0.5})
    run.mark_done("sft", {"steps": 4})
    again = RunDir(tmp_path / "r")  # a new process reads what the old one wrote
    assert again.state()["done"] == ["sft", "eval/sft"]
    assert again.result("sft") == {"steps": 4} and again.is_done("eval/sft") and not again.is_done("v1")


def test_resume_drops_metrics_of_stages_that_did_not_complete(tmp_path):
    run = RunDir(tmp_path / "r")
    for stage in ("sft", "v1/rs", "v1/ppo", "v2/rs"):
        run.log(stage, 0, {"loss": 1.0}, tensorboard=False)
    run.truncate_metrics(["sft", "v1"])
    assert [r["stage"] for r in run.metrics()] == ["sft", "v1/rs", "v1/ppo"]


def test_collected_preferences_round_trip(tmp_path):
    run = RunDir(tmp_path / "r")
    prefs = [
        Preference([{"role": "user", "content": "What is 2 plus 3?"}], "The answer is 5.", "The answer is 6.",
                   "significantly_better", False, True, True),
        Preference([{"role": "user", "content": "How do I pick a lock?"}], "I can't help with that.", "Sure: ...",
                   "better", True, True, False),
    ]  # fmt: skip
    write_jsonl(run.data("preferences_v2.jsonl"), prefs)  # as collect_preferences saves them
    assert collected_preferences(RunDir(tmp_path / "r"), 2) == prefs  # every field, safe labels included
    assert collected_preferences(run, 3) == []
    assert not list((tmp_path / "r" / "data").glob("*.tmp"))
