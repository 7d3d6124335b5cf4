"""The whole Llama 2-Chat recipe as one job: SFT -> reward models -> RLHF-V1..Vn -> evaluation.

    llama-rlhf run configs/local.yaml          # local: starts its own Ray on 127.0.0.1
    ray job submit --working-dir . -- llama-rlhf run configs/llama2-7b.yaml   # on a cluster
    llama-rlhf resume runs/local               # after a crash: continues from the last complete stage

Versions 1..`iterations.rs_only_until` use rejection sampling only; later versions run rejection
sampling followed by PPO (the paper's RLHF-V5). Before every version after the first, new preference
pairs are sampled from the current policy, annotated, and the reward models continue training on them.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from llama_rlhf.config import Config, config_to_yaml, load_config
from llama_rlhf.orchestrator.run_dir import RunDir
from llama_rlhf.orchestrator.timing import LOAD, Clock


def _version_stage(v: int) -> str:
    return f"v{v}"


def run(cfg: Config, run_dir: str | Path | None = None) -> int:
    """Run (or continue) the pipeline described by `cfg` in `run_dir` (default output_dir/name)."""
    from llama_rlhf.orchestrator import stages as S
    from llama_rlhf.orchestrator.progress import Progress

    run = RunDir(run_dir or Path(cfg.run.output_dir) / cfg.run.name)
    if not run.config_path.exists():
        run.config_path.write_text(config_to_yaml(cfg))
    done = run.state()["done"]
    run.truncate_metrics(done)
    _sweep_shared_memory(cfg, run)
    t0 = time.time()
    before = run.result("wall_seconds")  # a resumed run adds to what the earlier runs spent
    clock = Clock(before.get("by_activity"))
    with Progress(enabled=cfg.logging.progress) as progress:
        ctx = _context(cfg, run, progress, clock)
        try:
            _pipeline(ctx, S)
        finally:
            with clock("shut down actors"):
                _shutdown(ctx)
    run.mark_done("wall_seconds", {"seconds": time.time() - t0 + before.get("seconds", 0),
                                   "by_activity": {k: round(v, 3) for k, v in clock.totals.items()}})
    from llama_rlhf.orchestrator.report import write_report

    path = write_report(run)
    print(f"done in {time.time() - t0:.0f}s: {path}")
    return 0


def _sweep_shared_memory(cfg: Config, run: RunDir) -> None:
    """A run folder whose last run was killed as a whole: remove the shared-memory names its rollout engines
    left in /dev/shm (local mode only: a cluster's engines ran on other hosts, whose /dev/shm this one
    cannot see)."""
    from llama_rlhf.actors import shm

    path = run.root / "actors.json"
    if cfg.cluster.mode != "local" or not path.exists():
        return
    try:
        stale = shm.stale_names(json.loads(path.read_text()))
    except (OSError, ValueError):  # an unreadable actors.json loses only the sweep
        return
    if stale:
        print(f"removed {shm.unlink(stale)} shared-memory segments (/dev/shm/psm_*) left by the last run")


def _context(cfg: Config, run: RunDir, progress, clock: Clock | None = None):
    import torch

    from llama_rlhf.actors.loading import check_init_checkpoint
    from llama_rlhf.data.mix import TARGETS, mix_counts, mix_metrics
    from llama_rlhf.orchestrator.cluster import Placement, ppo_roles, start_ray
    from llama_rlhf.orchestrator.datasets import load_datasets, pair_batch
    from llama_rlhf.orchestrator.stages import Context
    from llama_rlhf.tokenizer import load_tokenizer, tokenizer_from_config

    clock = clock or Clock()
    random.seed(cfg.run.seed)
    torch.manual_seed(cfg.run.seed)
    with clock("start-up: tokenizer"):
        if (run.tokenizer_dir / "tokenizer.model").exists():
            tok = load_tokenizer(run.tokenizer_dir, cfg.tokenizer.sep_token)
        else:
            tok = tokenizer_from_config(cfg.tokenizer, run.root, cfg.model.init_checkpoint)
    if cfg.model.init_checkpoint:
        check_init_checkpoint(cfg.model.init_checkpoint, tok.vocab_size)
    with clock("start-up: data"):
        data = load_datasets(cfg)
    for line in data.reports:
        progress.note(line)
    with clock("start-up: Ray"):
        start_ray(cfg.cluster)
    placement = Placement.create(cfg.cluster, ppo_roles(cfg))
    ctx = Context(cfg, run, tok, data, placement, progress=progress, clock=clock)
    r = cfg.reward  # the RM data mix per source, in the metrics as well as printed above
    ctx.log("data", 0, {k: n for t in TARGETS for k, n in mix_metrics(
        mix_counts(data.preferences, t, r.helpful_mix_other, r.safety_mix_helpful_ratio), f"mix/{t}/").items()})
    with clock("start-up: data"):
        ctx.rm_eval_pairs = _rm_eval_pairs(ctx, pair_batch)
    with clock("start-up: training actors"):
        _start_actors(ctx)
    progress.note(f"run folder {run.root}; vocab {tok.vocab_size}; {len(data.sft)} SFT, "
                  f"{len(data.preferences)} preference pairs, {len(data.rlhf_prompts)} RLHF prompts, "
                  f"{len(data.eval_prompts)} eval prompts")
    return ctx


def _rm_eval_pairs(ctx, pair_batch) -> dict:
    """Held-out pairs per RM (own domain): those held out of the given sources (`data.rm_eval_pairs`), else
    the world's eval split with clean (noise-free) labels."""
    from llama_rlhf.data.world import preference_for

    max_len = ctx.cfg.reward.helpful.max_len
    if ctx.data.rm_eval:
        return {k: pair_batch(ctx.tok, v, max_len) for k, v in ctx.data.rm_eval.items()}
    world = ctx.data.world
    rng = random.Random(f"{ctx.cfg.run.seed}:rm-eval")
    prompts = world.prompts("eval", 2 * ctx.cfg.data.world.n_eval, "rm-eval")
    prefs = [x for p in prompts if (x := preference_for(p, rng, noise=0.0)) is not None]
    return {"helpful": pair_batch(ctx.tok, [p for p in prefs if not p.is_safety], max_len),
            "safety": pair_batch(ctx.tok, [p for p in prefs if p.is_safety], max_len)}


def _start_actors(ctx) -> None:
    from llama_rlhf.actors.remote import start_groups
    from llama_rlhf.orchestrator.cluster import ppo_roles

    note = ctx.progress.note if ctx.progress else None
    groups, ctx.placement.colocation = start_groups(ctx.cfg.cluster, ctx.placement, ppo_roles(ctx.cfg), note)
    ctx.policy = groups["policy"]
    ctx.rm = {"helpful": groups["rm_helpful"], "safety": groups["rm_safety"]}
    ctx.reference, ctx.critic = groups.get("reference"), groups.get("critic")
    _write_actors(ctx)


def _write_actors(ctx) -> None:
    """actors.json in the run folder: the node and pid of every rank of every role and of every rollout
    engine, rewritten whenever an actor is (re)created."""
    groups = {"policy": ctx.policy, "rm_helpful": ctx.rm["helpful"], "rm_safety": ctx.rm["safety"],
              "reference": ctx.reference, "critic": ctx.critic, "rollout": ctx.rollout}
    ctx.run.write_json(ctx.run.root / "actors.json", {k: g.processes() for k, g in groups.items() if g is not None})


def _rollout_replaced(ctx, S, k: int, synced: bool) -> None:
    """A rollout engine was lost and recreated from the latest folder: when the engines had been synced
    past that folder, push the policy's weights again before its share is retried."""
    if ctx.progress:
        ctx.progress.note(f"rollout engine {k} lost and recreated from {ctx.rollout.model_dir}"
                          + ("; the policy's weights synced again" if synced else ""))
    if synced:
        S.sync_rollout(ctx)
    _write_actors(ctx)


def _start_rollout(ctx, model_dir: str) -> None:
    from llama_rlhf.actors.rollout import RolloutGroup

    if ctx.rollout is None:
        from llama_rlhf.orchestrator import stages as S

        with ctx.clock("start-up: rollout engines"):
            ctx.rollout = RolloutGroup(model_dir, ctx.cfg.cluster, ctx.placement, seed=ctx.cfg.run.seed,
                                       max_model_len=ctx.cfg.model.max_seq_len,
                                       colocation=ctx.placement.colocation)
        ctx.rollout.on_replace = lambda k, synced: _rollout_replaced(ctx, S, k, synced)
        ctx.sync_ready = False
        _write_actors(ctx)
    ctx.rollout.set_model_dir(model_dir)


def _serve(ctx, S, path: str) -> None:
    """Make the rollout engines serve the policy checkpoint at `path`: a no-op when they already do
    (started from it, or it was published to them), else load it into the policy and sync."""
    if ctx.rollout.model_dir == Path(path):
        return
    with ctx.clock(LOAD):
        ctx.policy.load(S.model_spec(ctx, "causal", path, "serve"))
    ctx.rollout.set_model_dir(path)
    S.sync_rollout(ctx)


def _evaluate(ctx, name: str, stage: str, temperature: float | None = None, gatt: bool = True) -> dict:
    """Gold evaluation of the policy the engines serve (held-out prompts, intervals over prompts) and,
    when `gatt`, Ghost Attention consistency over `data.world.gatt_eval_turns` turns."""
    with ctx.clock("evaluation: policy (generate and judge)"):
        return _evaluate_policy(ctx, name, stage, temperature, gatt)


def _evaluate_policy(ctx, name: str, stage: str, temperature: float | None, gatt: bool) -> dict:
    from llama_rlhf.orchestrator import stages as S
    from llama_rlhf.orchestrator.evaluation import gatt_consistency, gold_eval, rm_eval_prompts

    cfg = ctx.cfg
    e = cfg.eval
    temp = e.temperature if temperature is None else temperature
    if _gold_judged(cfg):
        seed = S.stage_seed(cfg.run.seed, "eval")
        r = gold_eval(ctx.rollout, ctx.tok, ctx.data.eval_prompts, e.max_new_tokens, ctx.max_prompt_len,
                      temp, e.samples, seed)
        ci = lambda k: f"{r[k]:.3f} [{r[k + '_ci'][0]:.3f}, {r[k + '_ci'][1]:.3f}]"
        line = (f"gold helpfulness {ci('gold_helpfulness')}, safety {ci('gold_safety')}, "
                f"false refusals {ci('false_refusal')}")
        if e.greedy and temperature is None and temp > 0:  # a control at its own temperature: no greedy copy
            g = gold_eval(ctx.rollout, ctx.tok, ctx.data.eval_prompts, e.max_new_tokens, ctx.max_prompt_len,
                          0.0, 1, seed)
            r["greedy"] = {k: v for k, v in g.items() if k != "samples"}  # the sampled run keeps its examples
            line += f"; greedy helpfulness {g['gold_helpfulness']:.3f}"
    else:  # a user's prompts: judged by the RMs loaded now, against SFT's answers
        base = None if name == "SFT" else ctx.run.result("eval/sft").get("answers")
        r = rm_eval_prompts(ctx.rollout, ctx.tok, ctx.data.eval_prompts, ctx.rm, e.max_new_tokens,
                            ctx.max_prompt_len, base)
        line = f"RM-judged helpful {r['rm_helpful']:.3f}, safety {r['rm_safety']:.3f}"
        if base is not None:
            line += f", win rate vs SFT {r['rm_win_rate_vs_sft']:.3f}"
    if gatt:
        r["gatt"] = gatt_consistency(ctx.rollout, ctx.tok, ctx.data.gatt_eval, cfg.data.world.gatt_eval_turns,
                                     e.max_new_tokens, ctx.max_prompt_len)
    ctx.log(stage, 0, {k: v for k, v in r.items() if isinstance(v, float)})
    kept = r.get("gatt", {}).get("kept", [])
    ctx.progress.note(f"{name} (T={temp}): {line}"
                      + (f"; GAtt kept at turn 1/{len(kept)}: {kept[0]:.2f}/{kept[-1]:.2f}" if kept else ""))
    return r


def _gold_judged(cfg) -> bool:
    """The gold judge knows only the embedded world's prompts; a user's eval prompts are RM-judged."""
    return cfg.data.eval_prompts_path is None


def _load_rms(ctx, S, rm_paths: dict, tag: str) -> None:
    with ctx.clock(LOAD):
        for name in S.RM_NAMES:
            ctx.rm[name].load(S.model_spec(ctx, "scalar", rm_paths[name], tag))


def _baselines(ctx, S, sft_path: str, rm_paths: dict) -> dict:
    """The controls every report carries: the SFT policy sampled at the rejection-sampling temperature
    without any fine-tuning (when the evaluation uses another temperature), and RLHF-V1 with a random
    pick of the same K samples instead of the reward model's (`random_pick_baseline`)."""
    from llama_rlhf.orchestrator.rejection import random_pick_baseline, rs_temperature

    cfg, out = ctx.cfg, {}
    t_rs = rs_temperature(cfg, 1)
    _serve(ctx, S, sft_path)
    if t_rs != cfg.eval.temperature:
        out["sft_at_rs_temperature"] = _evaluate(ctx, "SFT at the RS temperature", "baselines/sft_at_rs_t", t_rs,
                                                 gatt=False)
    if cfg.rejection_sampling.random_pick_baseline:
        _load_rms(ctx, S, rm_paths, "baselines/rm_serve")
        fit = random_pick_baseline(ctx, sft_path)
        S.publish_policy(ctx, "baseline_random_pick")
        out["random_pick"] = {"fit": fit, "eval": _evaluate(ctx, "random-pick V1", "baselines/random_pick")}
    return out


def _pipeline(ctx, S) -> None:
    run, cfg = ctx.run, ctx.cfg

    # SFT
    if not run.is_done("sft"):
        run.mark_done("sft", S.train_sft(ctx))
    sft_path = str(run.ckpt("sft"))
    _start_rollout(ctx, sft_path)
    if _gold_judged(cfg) and not run.is_done("eval/sft"):
        run.mark_done("eval/sft", _evaluate(ctx, "SFT", "eval/sft"))

    # reward models, initialised from the SFT checkpoint, on the sources and pairs of the SFT policy's answers
    prefs = list(ctx.data.preferences) + _sft_preferences(ctx, S)
    todo = [S.RMJob(name, prefs, sft_path, f"rm_{name}") for name in S.RM_NAMES if not run.is_done(f"rm_{name}")]
    for stage, r in (S.train_reward_models(ctx, todo) if todo else {}).items():
        run.mark_done(stage, r)
    rm_paths = {name: str(run.ckpt(f"rm_{name}")) for name in S.RM_NAMES}
    if not run.is_done("eval/sft"):  # RM-judged: needs the reward models
        _load_rms(ctx, S, rm_paths, "eval/rm_serve")
        run.mark_done("eval/sft", _evaluate(ctx, "SFT", "eval/sft"))

    # controls: sampling temperature alone, and a random pick in place of the reward model's
    if cfg.iterations.num_versions and not run.is_done("baselines"):
        run.mark_done("baselines", _baselines(ctx, S, sft_path, rm_paths))

    # RLHF-V1 .. Vn
    from llama_rlhf.orchestrator.rejection import rejection_sampling

    policy_path = sft_path
    archive = run.data("rs_archive.json")
    for v in range(1, cfg.iterations.num_versions + 1):
        stage = _version_stage(v)
        if run.is_done(stage):
            policy_path = str(run.ckpt(stage))
            # by name in this run's folder: the recorded path is where the folder was when the stage ran (a
            # branch's parent run, or relative to the directory the run was started from)
            rm_paths = {name: str(run.ckpt(Path(p).name))
                        for name, p in run.result(stage).get("rm_paths", rm_paths).items()}
            prefs += S.collected_preferences(run, v)  # later versions replay from every pair so far
            continue
        ctx.archive = _load_archive(archive)
        _serve(ctx, S, policy_path)
        result: dict = {}
        if v > 1:  # new preferences from the current policy; the RMs continue on them
            new = S.collect_preferences(ctx, v)
            result["new_preferences"] = len(new)
            result["new_gatt_pairs"] = sum(p.source.endswith(S.GATT_PAIRS) for p in new)
            if new:
                replay = random.Random(S.stage_seed(cfg.run.seed, "replay", v)).sample(prefs, min(len(prefs), len(new)))
                trained = S.train_reward_models(ctx, [S.RMJob(name, new + replay, rm_paths[name], f"v{v}/rm_{name}",
                                                               ckpt=f"rm_{name}_v{v}") for name in S.RM_NAMES])
                for name in S.RM_NAMES:
                    r = trained[f"v{v}/rm_{name}"]
                    rm_paths[name] = r["checkpoint"]
                    result[f"rm_{name}"] = {k: x for k, x in r.items() if k.startswith(("accuracy", "count/"))}
                prefs += new
        _load_rms(ctx, S, rm_paths, f"v{v}/rm_serve")
        result.update(rejection_sampling(ctx, v, sft_path if cfg.rejection_sampling.init == "sft" else policy_path))
        if v > cfg.iterations.rs_only_until:
            from llama_rlhf.orchestrator.ppo_stage import critic_start, ppo

            S.publish_policy(ctx, f"v{v}_rs")
            rs_path = str(run.ckpt(f"v{v}_rs"))
            ref_path = rs_path if cfg.ppo.reference == "init" else sft_path
            result.update(ppo(ctx, v, rs_path, ref_path, critic_start(cfg, rm_paths["helpful"], rs_path)))
        else:
            S.publish_policy(ctx, stage)
        policy_path = str(run.ckpt(stage))
        result["eval"] = _evaluate(ctx, f"RLHF-V{v}", f"{stage}/eval")
        result["rm_paths"] = rm_paths
        run.mark_done(stage, result)


def _sft_preferences(ctx, S) -> list:
    """Annotated pairs of the SFT policy's answers (`iterations.sft_preferences` prompts), collected once;
    a resumed run reads them back from the run folder."""
    n = ctx.cfg.iterations.sft_preferences
    if not n:
        return []
    if ctx.run.is_done("collect/sft"):
        return S.collected_preferences(ctx.run, 0)
    pairs = S.collect_preferences(ctx, 0, n)
    ctx.run.mark_done("collect/sft", {"prompts": n, "pairs": len(pairs),
                                      "safety_pairs": sum(p.is_safety for p in pairs)})
    return pairs


def _load_archive(path: Path):
    """The RS archive so far. A version that crashed after saving it re-adds the very same samples on
    resume (its sampling is seeded by the version), which leaves the archive unchanged."""
    from llama_rlhf.algorithms.rejection import RejectionArchive

    return RejectionArchive.load(path) if path.exists() else RejectionArchive()


def _shutdown(ctx) -> None:
    import ray

    if ctx is None:
        return
    if ctx.rollout is not None:
        ctx.rollout.shutdown()
    ctx.placement.release()
    ctx.run.close()
    if ctx.cfg.cluster.mode == "local":
        ray.shutdown()


# --------------------------------------------------------------------------- other entry points


def resume(run_dir: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> int:
    """Continue a run from its folder: the resolved config it wrote, plus optional overrides."""
    run_dir = Path(run_dir)
    cfg = load_config(run_dir / "config.yaml", overrides)
    if overrides:
        (run_dir / "config.yaml").write_text(config_to_yaml(cfg))
    return run(cfg, run_dir)


def evaluate_run(run_dir: str | Path) -> int:
    """The run's saved gold table, and its greedy one where the run judged greedy answers too."""
    from llama_rlhf.orchestrator.report import gold_table, greedy_rows, summary_table

    run = RunDir(run_dir)
    print(summary_table(run))
    greedy = greedy_rows(run)
    if greedy:
        print("\nGreedy answers (T = 0, one per prompt):\n\n" + gold_table(greedy))
    return 0


def report(run_dir: str | Path, readme: str | Path | None = None) -> int:
    from llama_rlhf.orchestrator.report import update_readme, write_report

    print(write_report(RunDir(run_dir)))
    if readme:
        print(update_readme(RunDir(run_dir), readme))
    return 0
