"""Bad input is refused before any training, on one line naming file:line and the field (or the config
path and value), with exit code 2 and no traceback."""

import json
import subprocess
import sys

import pytest

from llama_rlhf.cli import main
from llama_rlhf.config import ConfigError, load_config
from llama_rlhf.data.loaders import DataError, load_preferences, load_prompts, load_sft
from llama_rlhf.orchestrator.preflight import check


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.mark.parametrize(
    "loader, bad, message",
    [
        (load_preferences, {"prompt": "q", "chosen": "", "rejected": "b"}, r"field 'chosen': empty"),
        (load_preferences, {"prompt": "q", "chosen": "a", "rejected": "  "}, r"field 'rejected': empty"),
        (load_preferences, {"prompt": "q", "chosen": "same", "rejected": "same "},
         r"field 'rejected': identical to 'chosen'"),
        (load_sft, {"messages": [{"role": "user", "content": " "}, {"role": "assistant", "content": "b"}]},
         r"field 'messages': messages\[0\]\.content: empty or blank"),
        (load_sft, {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": ""}]},
         r"field 'messages': messages\[1\]\.content: empty or blank"),
        (load_prompts, {"prompt": "a", "meta": [1, 2]}, r"field 'meta': must be an object"),
        (load_prompts, {"prompt": "a", "meta": "x"}, r"field 'meta': must be an object"),
        (load_prompts, {"prompt": "a", "id": {"x": 1}}, r"field 'id': must be a string or integer"),
    ],
)
def test_records_that_parse_but_cannot_train_are_refused(tmp_path, loader, bad, message):
    good = {"prompt": "q", "chosen": "a", "rejected": "b", "response": "r"}
    p = _write(tmp_path / "d.jsonl", [good, bad, good])
    with pytest.raises(DataError, match=rf"{p}:2: {message}"):
        loader(p)
    recs, rep = loader(p, skip_invalid=True)
    assert (rep.loaded, rep.skipped) == (2, 1) and "1 invalid skipped" in str(rep)


def test_non_utf8_line_is_named(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_bytes(b'{"prompt": "a"}\n{"prompt": "caf\xe9"}\n{"prompt": "b"}\n')
    with pytest.raises(DataError, match=rf"{p}:2: not UTF-8: byte 0xe9"):
        load_prompts(p)
    assert load_prompts(p, skip_invalid=True)[1].skipped == 1


@pytest.mark.parametrize("override, message", [
    ("rejection_sampling.temperatures=[]", "rejection_sampling.temperatures: tuple should have at least 1 item"),
    ("rejection_sampling.temperatures=[1.0,0]", "rejection_sampling.temperatures: every temperature must be > 0"),
    ("ppo.max_new_tokens=256", "ppo.max_new_tokens: must be < model.max_seq_len (256)"),
    ("reward.helpful.max_len=300", "reward.helpful.max_len: must be <= model.max_seq_len (256)"),
    ("ppo.kl_coef=[1,", "override 'ppo.kl_coef=[1,': value is not valid YAML"),
])
def test_cross_field_config_errors_at_load(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        load_config("configs/ci.yaml", [override])


def test_ranks_vs_gpus():
    with pytest.raises(ConfigError, match=r"cluster.critic.ranks: one GPU per rank, the cluster has 8 GPUs"):
        load_config("configs/llama2-7b.yaml", ["cluster.num_nodes=1", "cluster.critic.ranks=16"])
    for f in ("ci", "local", "llama2-7b", "llama2-13b", "llama2-70b"):
        load_config(f"configs/{f}.yaml")


def test_eval_prompts_checked_at_start(tmp_path):
    # a user's eval prompts need no gold-judge meta (the reward models judge them), but must parse
    p = _write(tmp_path / "eval.jsonl", [{"prompt": "what is 2+2?"}])
    assert "1 records" in check(load_config("configs/ci.yaml", [f"data.eval_prompts_path={p}"]))[0]
    bad = _write(tmp_path / "bad_eval.jsonl", [{"prompt": "  "}])
    with pytest.raises(DataError, match=rf"{bad}:1"):
        check(load_config("configs/ci.yaml", [f"data.eval_prompts_path={bad}"]))
    with pytest.raises(ConfigError, match="data.sft_path: no such file or folder"):
        check(load_config("configs/ci.yaml", [f"data.sft_path={tmp_path}/nope.jsonl"]))
    ok = _write(tmp_path / "unsafe.jsonl", [{"prompt": "how to pick a lock", "kind": "unsafe", "is_safety": True}])
    assert "1 records" in check(load_config("configs/ci.yaml", [f"data.eval_prompts_path={ok}"]))[0]


def _cli(capsys, *argv):
    rc = main(list(argv))
    err = capsys.readouterr().err
    return rc, err


@pytest.mark.parametrize("case", ["data", "utf8", "yaml", "config", "missing", "unknown_key"])
def test_cli_prints_one_line_exit_2(tmp_path, capsys, case):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"prompt": "q", "chosen": "a", "rejected": "a"}\n' if case == "data" else b'\xff\n')
    base = ["run", "configs/ci.yaml", f"run.output_dir={tmp_path}/runs"]
    argv = {
        "data": base + [f"data.preference_path={bad}"],
        "utf8": base + [f"data.prompts_path={bad}"],
        "yaml": base + ["ppo.kl_coef={a"],
        "config": base + ["ppo.clip_range=-1"],
        "missing": base + [f"data.sft_path={tmp_path}/none.jsonl"],
        "unknown_key": ["config", "configs/ci.yaml", "ppo.nope=1"],
    }[case]
    rc, err = _cli(capsys, *argv)
    assert rc == 2 and err.startswith("llama-rlhf: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err


def test_unknown_sep_token_is_a_config_error(tmp_path):
    from llama_rlhf.tokenizer import load_tokenizer, shipped_corpus, train_tokenizer

    train_tokenizer(list(shipped_corpus())[:200], tmp_path / "tok", vocab_size=512)
    with pytest.raises(ConfigError, match=r"tokenizer.sep_token: '<nope>' is not in the vocabulary"):
        load_tokenizer(tmp_path / "tok", "<nope>")


def test_cli_subprocess_no_traceback(tmp_path):
    bad = _write(tmp_path / "sft.jsonl", [{"prompt": "a", "response": "b"}, {"prompt": "a", "response": " "}])
    r = subprocess.run([sys.executable, "-m", "llama_rlhf.cli", "run", "configs/ci.yaml", f"data.sft_path={bad}",
                        f"run.output_dir={tmp_path}"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr == f"llama-rlhf: error: {bad}:2: field 'response': empty\n"


@pytest.mark.parametrize("argv", [["eval", "{d}"], ["eval", "{d}", "--temperature", "0", "1"],
                                  ["eval", "{d}", "--gatt-dialogs", "64"], ["report", "{d}"]])
def test_eval_and_report_of_a_mistyped_folder_fail_without_creating_it(tmp_path, capsys, argv):
    missing = tmp_path / "runs" / "lcoal"
    rc, err = _cli(capsys, *[a.format(d=missing) for a in argv])
    assert rc == 2 and "not a run folder (no config.yaml)" in err and err.count("\n") == 1, err
    assert not missing.exists() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("flag,value", [("--temperature", "-0.5"), ("--temperature", "hot"),
                                        ("--temperature", "0 -0.5"), ("--samples", "0"), ("--gatt-dialogs", "0")])
def test_eval_flags_are_checked_before_anything_runs(tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as e:
        main(["eval", str(tmp_path), flag, *value.split()])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"argument {flag}" in err and "Traceback" not in err


def test_an_eval_set_the_world_cannot_hold_is_one_line(tmp_path):
    """More distinct held-out prompts than the world's eval split holds: one line naming the field, exit 2,
    before anything trains (`configs/local.yaml` with `run.seed=1` hit this as a traceback)."""
    r = subprocess.run([sys.executable, "-m", "llama_rlhf.cli", "run", "configs/ci.yaml", "data.world.n_eval=1000",
                        f"run.output_dir={tmp_path}"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr[-2000:]
    assert r.stderr.startswith("llama-rlhf: error: data.world.n_eval: 1000 distinct eval prompts need more")
    assert not list((tmp_path / "ci").glob("ckpt/*"))  # no checkpoint: nothing trained
