"""End to end: the whole recipe on configs/ci.yaml through the real CLI (real Ray, DeepSpeed, vLLM),
a run killed with SIGKILL mid-RLHF and resumed, and the same job through `ray job submit`.

Each run is a subprocess in its own session with its own Ray temp dir, so a SIGKILL can take the
driver and every Ray process it started down together, as a crash would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "ci.yaml"


def _env(ray_tmp: str) -> dict:
    env = dict(os.environ, RAY_TMPDIR=ray_tmp, RAY_AUTH_MODE="disabled", PYTHONUNBUFFERED="1")
    env.pop("TRITON_INTERPRET", None)  # the pipeline on CPU uses SDPA, as `make demo` does
    return env


def _cli(*args: str, ray_tmp: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "llama_rlhf.cli", *args], cwd=ROOT, env=_env(ray_tmp),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            **kw)


def _kill_all(proc: subprocess.Popen, ray_tmp: str) -> None:
    """SIGKILL the run's whole session and every Ray process that lives under its temp dir."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    subprocess.run(["pkill", "-9", "-f", ray_tmp], check=False)
    proc.wait(timeout=60)


def _finish(proc: subprocess.Popen, ray_tmp: str, timeout: float = 900) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        _kill_all(proc, ray_tmp)  # leftovers of a clean exit, or of a hang
    assert proc.returncode == 0, out[-4000:]
    return out


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _state(run_dir: Path) -> dict:
    return json.loads((run_dir / "state.json").read_text())


def _final_metrics(run_dir: Path) -> dict:
    r = _state(run_dir)["results"]["v2"]
    keep = ("gold_helpfulness", "gold_safety", "false_refusal", "per_prompt", "gatt")
    return {"eval": {k: r["eval"][k] for k in keep}, "rc_last": r["rc_last"], "kl_last": r["kl_last"],
            "rs_best_mean": r["rs_best_mean"]}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("runs")
    ray_tmp = tempfile.mkdtemp(prefix="ray_e2e_", dir="/tmp")
    t = time.perf_counter()
    log = _finish(_cli("run", str(CONFIG), f"run.output_dir={out_dir}", ray_tmp=ray_tmp), ray_tmp)
    print(f"uninterrupted run: {time.perf_counter() - t:.0f}s")
    return out_dir / "ci", log


def test_whole_pipeline_produces_versions_report_and_checkpoints(uninterrupted):
    import torch
    from transformers import LlamaForCausalLM, LlamaForSequenceClassification

    run_dir, log = uninterrupted
    st = _state(run_dir)
    for stage in ("sft", "eval/sft", "rm_helpful", "rm_safety", "v1", "v2"):
        assert stage in st["done"], stage
    res = st["results"]
    assert res["sft"]["last_loss"] < res["sft"]["first_loss"]
    for rm in ("rm_helpful", "rm_safety"):
        assert 0.0 <= res[rm]["accuracy"] <= 1.0 and sum(res[rm][k] for k in res[rm] if k.startswith("count/")) > 0
    # the first RMs also train on annotated pairs of the SFT policy's own answers
    assert res["collect/sft"]["pairs"] > 0 and (run_dir / "data" / "preferences_v0.jsonl").exists()
    assert any(k.startswith("mix/policy_samples_v0") for k in res["rm_helpful"]), res["rm_helpful"]
    v2 = res["v2"]
    assert v2["iterations"] >= 1 and v2["gatt_dialogs"] > 0 and "new_preferences" in v2
    # GAtt dialog turns answered by V1 and annotated with V2's new pairs (gatt.preferences_per_version)
    lines = (run_dir / "data" / "preferences_v2.jsonl").read_text().splitlines()
    sources = [json.loads(x)["source"] for x in lines]
    gatt_source = "policy samples v2 GAtt dialogs"
    assert sources.count(gatt_source) == v2["new_gatt_pairs"] <= 4
    assert len(sources) == v2["new_preferences"] and set(sources) <= {"policy samples v2", gatt_source}
    assert v2["archive_rescored"] > 0  # V1's picks re-scored by V2's reward models before selection
    assert "rc_first_quarter" in v2 and "rc_last_quarter" in v2
    # PPO's Rc on fixed held-out prompts (greedy) before and after, the paired change with its interval
    lo, hi = v2["heldout_rc_delta_ci"]
    assert lo <= v2["heldout_rc_delta"] <= hi and v2["heldout_prompts"] > 0
    assert abs(v2["heldout_rc_after"] - v2["heldout_rc_before"] - v2["heldout_rc_delta"]) < 1e-6
    # the rollout engine served the policy's weights: vLLM's sampled log-probs = the policy's forward
    assert v2["logprob_gap_max"] < 1e-3
    report = (run_dir / "report.md").read_text()
    assert {"gold_by_kind/unsafe", "gold_by_kind/arith"} <= set(v2["eval"])
    for heading in ("Gold judge on held-out prompts", "By prompt kind", "Reward models", "Ghost Attention",
                    "RLHF-V2 (RS + PPO)", "Rejection sampling", "PPO (mean Rc", "held-out Rc before"):
        assert heading in report
    # the controls, with intervals: SFT sampled at the RS temperature, V1 with a random pick
    b = res["baselines"]
    assert b["sft_at_rs_temperature"]["temperature"] == 0.7 and b["random_pick"]["fit"]["train_samples"] > 0
    table = report.split("### Gold judge")[1].split("###")[0]
    for row in ("| SFT |", "| baseline: SFT at the RS temperature |", "| baseline: V1 with a random pick (no RM) |",
                "| RLHF-V1 (RS) |", "| RLHF-V2 (RS + PPO) |"):
        line = next(x for x in table.splitlines() if x.startswith(row))
        assert line.count("[") >= 3, line  # helpfulness, safety and false refusals carry 95% intervals
    # the reward models' pick among the K samples, judged by gold against a random sample and the best of K
    for q in (res["v1"]["pick_gold"]["benign"], b["random_pick"]["fit"]["pick_gold"]["benign"]):
        assert q["random"] <= q["best"] and q["picked"] <= q["best"] and q["pairs"] > 0 and 0 <= q["agreement"] <= 1
        assert q["gain_ci"][0] <= q["gain"] <= q["gain_ci"][1]
    assert 0.0 <= res["v1"]["rs_benign_gated"] <= 1.0 and "benign samples gated to Rs" in report
    assert 0.0 <= res["v1"]["rs_within_prompt"] <= 1.0 and "variance within prompts" in report
    # V2's GAtt data: how many of its answers keep the instruction, the picks and all samples
    assert 0.0 <= res["v2"]["gatt_kept_picks"] <= 1.0 and 0.0 <= res["v2"]["gatt_kept_samples"] <= 1.0
    assert "| RLHF-V2 | 0.7 |" in report.split("kept by all samples")[1].split("###")[0]
    picks = report.split("Rc orders a pair as gold")[1].split("###")[0]
    assert "| RLHF-V1 | benign (helpfulness) |" in picks and "| random pick (V1 control) | benign" in picks
    for name in ("gold_helpfulness", "gold_safety", "false_refusal"):
        lo, hi = v2["eval"][f"{name}_ci"]
        assert lo <= v2["eval"][name] <= hi
    # greedy answers judged beside the sampled ones, for every policy but the control at its own temperature
    assert v2["eval"]["greedy"]["temperature"] == 0.0 and v2["eval"]["greedy"]["samples_per_prompt"] == 1
    assert "greedy" in res["eval/sft"] and "greedy" not in b["sft_at_rs_temperature"]
    greedy = report.split("### Greedy answers")[1].split("###")[0]
    assert "| RLHF-V2 (RS + PPO) | 0.0 |" in greedy and "| baseline: V1 with a random pick (no RM) | 0.0 |" in greedy
    assert "Greedy answers: gold helpfulness" in report.split("###")[0]  # the headline
    assert len(v2["eval"]["gatt"]["kept"]) == 2
    kept_last = v2["eval"]["gatt"]["kept_by_dialog"][-1]  # per dialog: the report's intervals come from these
    assert len(kept_last) == v2["eval"]["gatt"]["dialogs"] and set(kept_last) <= {0, 1}
    assert "(last column: 95% bootstrap interval over dialogs)" in report.split("### Ghost Attention")[1]
    # where the wall time went: each activity timed, the untimed rest small
    wall = res["wall_seconds"]
    spent = wall["by_activity"]
    for activity in ("start-up: Ray", "start-up: rollout engines", "train: policy (SFT, rejection-sampling fine-tune)",
                     "train: reward models", "generate: rollout engines", "score: reward models", "weight sync",
                     "train: PPO (policy and critic)", "evaluation: policy (generate and judge)",
                     "load models (DeepSpeed init, checkpoint read)"):
        assert spent[activity] > 0, activity
    assert 0.8 * wall["seconds"] < sum(spent.values()) <= wall["seconds"], (spent, wall["seconds"])
    assert "### Where the wall time went" in report and "| weight sync |" in report
    # the README's demo section is regenerated from the report, not typed
    readme = run_dir.parent / "README.md"
    readme.write_text("intro\n<!-- demo-report:begin -->\nold\n<!-- demo-report:end -->\nrest\n")
    from llama_rlhf.cli import main

    assert main(["report", str(run_dir), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "\nold\n" not in text and text.startswith("intro") and text.endswith("rest\n")
    assert "| baseline: V1 with a random pick (no RM) |" in text and "CPU cores" in text
    for png in ("gold_scores.png", "ppo.png", "rm_accuracy.png"):
        assert (run_dir / "plots" / png).stat().st_size > 1000
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any(r["stage"] == "v2/ppo" and "kl" in r for r in rows)
    assert any((run_dir / "tb").iterdir())
    # checkpoints are plain HF folders
    lm = LlamaForCausalLM.from_pretrained(run_dir / "ckpt" / "v2")
    rm = LlamaForSequenceClassification.from_pretrained(run_dir / "ckpt" / "rm_safety")
    ids = torch.tensor([[1, 5, 9, 12]])
    assert lm(ids).logits.shape[-1] == lm.config.vocab_size and rm(ids).logits.shape == (1, 1)
    assert json.loads((run_dir / "data" / "rs_archive.json").read_text())


def test_eval_rejudges_every_saved_policy_as_the_run_judged_it(uninterrupted):
    """`llama-rlhf eval RUN --temperature 1 0 --gatt-dialogs N` loads each saved checkpoint from its files
    into one rollout engine and judges it on the run's held-out prompts: at the run's own temperature and
    seed it must give the run's own per-prompt figures, greedy (one sample per prompt) the run's greedy
    ones, and on the run's own GAtt dialogs its per-dialog figures. Sampled answers differ from policy to
    policy, so weights left over from the previous checkpoint would fail it."""
    run_dir, _ = uninterrupted
    res = _state(run_dir)["results"]
    n = res["eval/sft"]["gatt"]["dialogs"]
    ray_tmp = tempfile.mkdtemp(prefix="ray_e2e_", dir="/tmp")
    out = _finish(_cli("eval", str(run_dir), "--temperature", "1", "0", "--gatt-dialogs", str(n), ray_tmp=ray_tmp),
                  ray_tmp)
    want = {"SFT": res["eval/sft"], "baseline: V1 with a random pick (no RM)": res["baselines"]["random_pick"]["eval"],
            "RLHF-V1 (RS)": res["v1"]["eval"], "RLHF-V2 (RS + PPO)": res["v2"]["eval"]}
    assert len({json.dumps(r["samples"]) for r in want.values()}) == len(want)
    got = json.loads((run_dir / "eval_T1.json").read_text())
    assert list(got) == list(want)
    for name, r in want.items():
        assert got[name]["per_prompt"] == r["per_prompt"] and got[name]["samples"] == r["samples"], name
        assert got[name]["temperature"] == 1.0
    assert "| RLHF-V2 (RS + PPO) | 1.0 |" in out and "By prompt kind" in out
    # greedy: the run's own greedy figures (`eval.greedy`, judged on the run's engines after each weight sync)
    got = json.loads((run_dir / "eval_T0.json").read_text())
    for name, r in want.items():
        assert got[name]["per_prompt"] == r["greedy"]["per_prompt"], name
    # Ghost Attention on the run's own held-out dialogs: the run's own per-dialog figures
    got = json.loads((run_dir / f"gatt_N{n}.json").read_text())
    for name, r in want.items():
        assert got[name]["gatt"]["kept_by_dialog"] == r["gatt"]["kept_by_dialog"], name
    assert "| RLHF-V2 (RS + PPO) | yes |" in out and "| RLHF-V1 (RS) | no |" in out


def _killed_mid_ppo_and_resumed(run_dir: Path) -> tuple[str, str, list[str]]:
    """Resume `run_dir` colocated, saving PPO's state every iteration; SIGKILL the whole run once PPO of V2 has
    saved its state after iteration 1 (of 2); resume it again. Returns both outputs and the shared-memory
    segments the kill left."""
    ray_tmp = tempfile.mkdtemp(prefix="ray_e2e_", dir="/tmp")
    proc = _cli("resume", str(run_dir), "ppo.checkpoint_every=1", "cluster.placement=colocated", ray_tmp=ray_tmp)
    saved = run_dir / "ckpt" / "v2_ppo_state" / "loop.json"
    deadline = time.time() + 900
    while time.time() < deadline and proc.poll() is None and not saved.exists():
        time.sleep(0.5)
    if proc.poll() is not None:
        pytest.fail("the run ended before it could be killed mid-PPO:\n" + proc.stdout.read()[-4000:])
    _kill_all(proc, ray_tmp)
    first = proc.stdout.read()
    assert "v2" not in _state(run_dir)["done"] and json.loads(saved.read_text())["next"] == 1
    # the whole-run kill left the rollout engine's shared-memory queues in /dev/shm; resume removes them
    from llama_rlhf.actors.shm import stale_names

    left = stale_names(json.loads((run_dir / "actors.json").read_text()))
    assert left, "the killed run's actors.json names no shared memory that the kill left"
    ray_tmp2 = tempfile.mkdtemp(prefix="ray_e2e_", dir="/tmp")
    out = _finish(_cli("resume", str(run_dir), ray_tmp=ray_tmp2), ray_tmp2)
    return first, out, left


def test_sigkill_mid_ppo_then_resume_matches_uninterrupted(uninterrupted, tmp_path):
    """A branch of the uninterrupted run after RLHF-V1 (`llama-rlhf branch`), resumed with the colocated
    placement (the hybrid engine's turn-taking of the DeepSpeed roles and vLLM; on CPU the memory moves are
    no-ops, the code path is the GPU's) and PPO's sharded state saved every iteration; killed mid-PPO of
    RLHF-V2 and resumed again: PPO continues from its saved iteration and the run ends where the
    uninterrupted one did. Neither the branch, the placement, the saved state nor the kill may change a
    single final number."""
    from llama_rlhf.cli import main

    run_ref, _ = uninterrupted
    run_dir = tmp_path / "ci"
    assert main(["branch", str(run_ref), str(run_dir), "--after-version", "1"]) == 0
    assert "v1" in _state(run_dir)["done"] and "v2" not in _state(run_dir)["done"]
    # the parent run moved away while the branch runs: a branch holds all it resumes from (V1's result records
    # its reward models' paths inside the parent)
    aside = run_ref.with_name(run_ref.name + "-aside")
    run_ref.rename(aside)
    try:
        first, out, left = _killed_mid_ppo_and_resumed(run_dir)
    finally:
        aside.rename(run_ref)
    assert "colocation: training->rollout" in first and "colocation: rollout->training" in first
    # (a killed process's own exit may still remove some in between: the count is not exact)
    assert "shared-memory segments (/dev/shm/psm_*) left by the last run" in out, out[:400]
    assert not any(Path("/dev/shm", n).exists() for n in left)
    assert "v2/ppo: resumed from the state saved after iteration 1" in out
    assert _state(run_dir)["results"]["v2"]["ppo_resumed_from"] == 1
    assert not (run_dir / "ckpt" / "v2_ppo_state").exists()  # discarded once the version's PPO finished
    assert _final_metrics(run_dir) == _final_metrics(run_ref)
    # resume drops only the rows of the stage that did not complete, and PPO puts its saved rows back
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {"sft", "eval/sft", "v1/eval", "v2/eval", "v2/ppo"} <= {r["stage"] for r in rows}
    assert sorted(r["step"] for r in rows if r["stage"] == "v2/ppo" and "kl" in r) == [0, 1]


def test_ray_job_submit_against_a_local_head(tmp_path):
    """`ray start --head` + `ray job submit --working-dir . -- ...` runs the job in cluster mode. Its one
    version is RS then critic-free PPO (`ppo.advantage=rloo`), saving PPO's state every iteration: the job
    starts a reference and no critic, and PPO runs, saves and finishes without one."""
    bin_dir = Path(sys.executable).parent
    ray_tmp = tempfile.mkdtemp(prefix="ray_job_", dir="/tmp")
    env = _env(ray_tmp)
    # Other tests of this session may still hold a Ray with the default ports (GCS, dashboard agent,
    # metrics): this head takes free ones of its own.
    port, gcs, agent, agent_grpc, metrics, client = (str(_free_port()) for _ in range(6))
    subprocess.run([str(bin_dir / "ray"), "start", "--head", "--num-cpus=2", f"--temp-dir={ray_tmp}",
                    f"--port={gcs}", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
                    f"--dashboard-port={port}", f"--dashboard-agent-listen-port={agent}",
                    f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics}",
                    f"--ray-client-server-port={client}", "--include-dashboard=true", "--disable-usage-stats"],
                   env=env, check=True, capture_output=True)
    submit = [str(bin_dir / "ray"), "job", "submit", f"--address=http://127.0.0.1:{port}", "--working-dir", str(ROOT),
              "--", sys.executable, "-m", "llama_rlhf.cli", "run", "configs/ci.yaml", "cluster.mode=cluster",
              f"run.output_dir={tmp_path}", "iterations.num_versions=1", "iterations.rs_only_until=0",
              "ppo.advantage=rloo", "ppo.samples_per_prompt=2", "ppo.checkpoint_every=1",
              "data.world.n_sft=64", "data.world.n_preferences=64"]
    try:
        for _ in range(30):  # the head's job agent comes up a few seconds after `ray start` returns
            job = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=900)
            if "No available agent" not in job.stdout + job.stderr:
                break
            time.sleep(2)
        assert job.returncode == 0, job.stdout[-4000:] + job.stderr[-2000:]
        assert "succeeded" in job.stdout + job.stderr
        run_dir = tmp_path / "ci"
        assert "v1" in _state(run_dir)["done"] and _state(run_dir)["results"]["v1"]["iterations"] == 2
        actors = json.loads((run_dir / "actors.json").read_text())
        assert "reference" in actors and "critic" not in actors
        rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        ppo_rows = [r for r in rows if r["stage"] == "v1/ppo" and "kl" in r]
        assert len(ppo_rows) == 2 and not any(k.startswith("critic/") for r in ppo_rows for k in r)
    finally:
        # not `ray stop`: it would also stop the Ray of the other tests in this session
        subprocess.run(["pkill", "-9", "-f", ray_tmp], check=False)


# --------------------------------------------------------------------------- fault matrix

ROLES = ("policy", "reference", "critic", "rm_helpful", "rm_safety", "rollout")
# Each kill but a rollout engine's costs a restart (~1-2 min here), so CI runs five: a trainer, a reward
# model and a rollout engine mid rejection sampling, the critic and a rollout engine mid PPO (the re-sync
# path); FAULT_MATRIX=full runs every role in both stages (12 kills)
DIAGONAL = [("policy", "rs"), ("rm_helpful", "rs"), ("rollout", "rs"), ("critic", "ppo"), ("rollout", "ppo")]
FULL = [(role, when) for when in ("rs", "ppo") for role in ROLES]


def _triggered(run_dir: Path, when: str, since: float) -> bool:
    """`rs`: some version's rejection samples were saved after `since` and that version is not done (its
    fine-tuning, GAtt and context-distillation data, publication and evaluation are ahead); `ppo`: a PPO
    iteration was logged after `since` (the next iteration is under way)."""
    try:
        done = _state(run_dir)["done"]
        if when == "rs":
            return any(p.stat().st_mtime > since and p.stem.removeprefix("rs_samples_") not in done
                       for p in (run_dir / "data").glob("rs_samples_v*.jsonl"))
        rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
        return any(r["stage"].endswith("/ppo") and r["time"] > since for r in rows)
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return False


def _kill_schedule(run_dir: Path, schedule, proc, log: list) -> None:
    """Kill -9 rank 0 of each (role, when) of `schedule` in turn, once its moment has come in the run's
    current attempt; `log` gets (role, when, the stages done at the kill, pid)."""
    since, killed = time.time(), set()
    for role, when in schedule:
        while proc.poll() is None:
            try:
                pid = json.loads((run_dir / "actors.json").read_text())[role][0]["pid"]
            except (FileNotFoundError, json.JSONDecodeError, KeyError):
                pid = None
            if pid is not None and pid not in killed and _triggered(run_dir, when, since):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:  # an attempt already ending: its actors.json is stale
                    time.sleep(0.2)
                    continue
                killed.add(pid)
                since = time.time()
                log.append((role, when, list(_state(run_dir)["done"]), pid))
                break
            time.sleep(0.2)


def test_fault_matrix_each_role_killed_mid_stage_and_the_run_ends_as_uninterrupted(uninterrupted, tmp_path):
    """Kill -9 of a rank of every role (policy, reference, critic, both RMs, a rollout engine) mid rejection
    sampling and mid PPO: a lost rollout engine is recreated and its share retried (the policy's weights
    synced into it again); any other lost actor restarts every group from the last committed checkpoint
    and redoes the stage. The run must end with the uninterrupted run's final numbers. No kill falls before
    RLHF-V1, so the run is the uninterrupted one's branch after its SFT, first reward models and controls
    (`llama-rlhf branch --after-version 0`), resumed."""
    import threading

    from llama_rlhf.cli import main

    run_ref, _ = uninterrupted
    schedule = FULL if os.environ.get("FAULT_MATRIX") == "full" else DIAGONAL
    assert main(["branch", str(run_ref), str(tmp_path / "ci"), "--after-version", "0"]) == 0
    ray_tmp = tempfile.mkdtemp(prefix="ray_e2e_", dir="/tmp")
    t0 = time.perf_counter()
    proc = _cli("resume", str(tmp_path / "ci"), f"run.max_restarts={len(schedule)}", ray_tmp=ray_tmp)
    kills: list = []
    killer = threading.Thread(target=_kill_schedule, args=(tmp_path / "ci", schedule, proc, kills), daemon=True)
    killer.start()
    out = _finish(proc, ray_tmp, timeout=2400)
    killer.join(timeout=5)
    restarts = out.count("an actor died")
    replaced = out.count("rollout engine 0 lost")
    print(f"\nfault matrix: {len(kills)} of {len(schedule)} kills in {time.perf_counter() - t0:.0f}s; "
          f"{restarts} restarts from the last checkpoint, {replaced} rollout engines recreated")
    for role, when, done, pid in kills:
        print(f"  killed {role:<10} mid {when:<3} (pid {pid}) after stages {done[-1] if done else '-'}")
    assert len(kills) == len(schedule), kills
    assert restarts + replaced >= len(schedule) - sum(1 for r, w in schedule if r in ("reference", "critic")
                                                      and w == "rs"), out[-3000:]
    assert _final_metrics(tmp_path / "ci") == _final_metrics(run_ref)
