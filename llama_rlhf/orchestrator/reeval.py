"""`llama-rlhf eval RUN --temperature T`: the gold judge on every saved policy of a finished (or stopped)
run, sampled at another temperature than the run's `eval.temperature` (0 = greedy).

The run's own evaluation samples at `eval.temperature` (with `eval.greedy`, greedy answers are judged too).
How a policy is sampled changes what its gold figures say (sampling at T = 1 spreads probability over
wrong answers that greedy decoding never emits), and RLHF can move the two in opposite directions: this
re-evaluation judges any temperature (and runs made before `eval.greedy`) on the same held-out prompts and
seed as the run's. Each saved checkpoint is served by a fresh rollout engine of the run's cluster config
(the same vLLM path as the pipeline's evaluation); nothing is trained and the run's state is not touched:
the results go to `eval_T<T>.json` in the run folder and the tables to stdout.
"""

from __future__ import annotations

import json
from pathlib import Path

from llama_rlhf.orchestrator.run_dir import RunDir, RunDirError


def saved_policies(run: RunDir) -> list[tuple[str, Path]]:
    """(name, checkpoint) of SFT, the random-pick control and every completed RLHF version, in the report's
    names."""
    from llama_rlhf.orchestrator.report import RANDOM_PICK, versions

    names = [n for n, _, _ in versions(run)]
    sft = names[:1] == ["SFT"]
    out = [("SFT", run.ckpt("sft"))] if sft else []
    if run.ckpt("baseline_random_pick").is_dir():
        out.append((RANDOM_PICK, run.ckpt("baseline_random_pick")))
    out += [(n, run.ckpt(f"v{i}")) for i, n in enumerate(names[1:] if sft else names, start=1)]
    missing = [str(p) for _, p in out if not p.is_dir()]
    if missing:
        raise RunDirError(f"{run.root}: saved policies missing: {', '.join(missing)}")
    return out


def reevaluate(run_dir: str | Path, temperature: float, samples: int | None = None) -> int:
    from llama_rlhf.orchestrator.datasets import load_datasets
    from llama_rlhf.orchestrator.evaluation import gold_eval
    from llama_rlhf.orchestrator.stages import max_prompt_len, stage_seed

    cfg, run, tok = _open(run_dir)
    prompts = load_datasets(cfg).eval_prompts
    e = cfg.eval
    n = e.samples if samples is None else samples

    def judge(engines) -> dict:
        return gold_eval(engines, tok, prompts, e.max_new_tokens, max_prompt_len(cfg), temperature, n,
                         stage_seed(cfg.run.seed, "eval"))

    results = _each_policy(cfg, run, judge,
                           lambda r: f"gold helpfulness {r['gold_helpfulness']:.3f} at T={temperature}")
    out = run.root / f"eval_T{temperature:g}.json"
    out.write_text(json.dumps({name: r for name, r in results}, indent=1))
    print(tables(results))
    print(f"results in {out}")
    return 0


def regatt(run_dir: str | Path, dialogs: int) -> int:
    """Ghost Attention consistency of every saved policy on `dialogs` held-out dialogs (the run's first
    `data.world.n_gatt_eval` of them are the ones its own evaluation used): the run's 32 dialogs give an
    interval of about +-0.16 on a kept rate, too wide to tell 0.6 from 0.9."""
    from llama_rlhf.config import load_config
    from llama_rlhf.orchestrator.datasets import load_datasets
    from llama_rlhf.orchestrator.evaluation import gatt_consistency
    from llama_rlhf.orchestrator.report import gatt_rows_table, versions
    from llama_rlhf.orchestrator.stages import max_prompt_len

    cfg, run, tok = _open(run_dir)
    held_out = load_datasets(load_config(run.config_path, [f"data.world.n_gatt_eval={dialogs}"])).gatt_eval
    if not held_out:
        raise RunDirError(f"{run.root}: its world has no GAtt evaluation dialogs (data.world.gatt_eval_turns)")
    turns = cfg.data.world.gatt_eval_turns

    def judge(engines) -> dict:
        return {"gatt": gatt_consistency(engines, tok, held_out, turns, cfg.eval.max_new_tokens, max_prompt_len(cfg))}

    results = _each_policy(cfg, run, judge, lambda r: f"instruction kept at turn {turns}: {r['gatt']['kept'][-1]:.2f}")
    trained = {n: g for n, _, g in versions(run)}
    out = run.root / f"gatt_N{dialogs}.json"
    out.write_text(json.dumps({name: r for name, r in results}, indent=1))
    print(gatt_rows_table([(name, r, trained.get(name, False)) for name, r in results]))
    print(f"results in {out}")
    return 0


def _open(run_dir: str | Path):
    """(config, run folder, tokenizer) of a run judged by gold; a mistyped folder is not created."""
    from llama_rlhf.config import load_config
    from llama_rlhf.orchestrator.preflight import resume_config
    from llama_rlhf.tokenizer import load_tokenizer

    cfg = load_config(resume_config(run_dir))  # before RunDir, which would create a mistyped folder
    run = RunDir(run_dir)
    if cfg.data.eval_prompts_path is not None:
        raise RunDirError(f"{run.root}: its eval prompts are a user's (data.eval_prompts_path): the gold judge "
                          "knows only the embedded world's prompts")
    return cfg, run, load_tokenizer(run.tokenizer_dir, cfg.tokenizer.sep_token)


def _each_policy(cfg, run: RunDir, judge, line) -> list[tuple[str, dict]]:
    """judge(engines) for every saved policy, each served by a fresh rollout engine of the run's cluster
    config; `line(result)` is printed as each one ends."""
    from llama_rlhf.actors.rollout import RolloutGroup
    from llama_rlhf.orchestrator.cluster import Placement, start_ray

    policies = saved_policies(run)
    start_ray(cfg.cluster)
    placement = Placement.create(cfg.cluster, ppo=())
    results: list[tuple[str, dict]] = []
    try:
        for name, path in policies:
            engines = RolloutGroup(str(path), cfg.cluster, placement, seed=cfg.run.seed,
                                   max_model_len=cfg.model.max_seq_len)
            try:
                r = judge(engines)
            finally:
                engines.shutdown()
            results.append((name, r))
            print(f"{name}: {line(r)}", flush=True)
    finally:
        placement.release()
        if cfg.cluster.mode == "local":
            import ray

            ray.shutdown()
    return results


def tables(results: list[tuple[str, dict]]) -> str:
    from llama_rlhf.orchestrator.report import gold_table, kind_rows

    return gold_table(results) + "\n\nBy prompt kind (unsafe: gold safety; the others: gold helpfulness):\n\n" + \
        kind_rows(results)
