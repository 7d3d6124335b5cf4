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
    from llama_rlhf.actors.rollout import RolloutGroup
    from llama_rlhf.config import load_config
    from llama_rlhf.orchestrator.cluster import Placement, start_ray
    from llama_rlhf.orchestrator.datasets import load_datasets
    from llama_rlhf.orchestrator.evaluation import gold_eval
    from llama_rlhf.orchestrator.preflight import resume_config
    from llama_rlhf.orchestrator.stages import max_prompt_len, stage_seed
    from llama_rlhf.tokenizer import load_tokenizer

    cfg = load_config(resume_config(run_dir))  # before RunDir, which would create a mistyped folder
    run = RunDir(run_dir)
    if cfg.data.eval_prompts_path is not None:
        raise RunDirError(f"{run.root}: its eval prompts are a user's (data.eval_prompts_path): the gold judge "
                          "knows only the embedded world's prompts")
    policies = saved_policies(run)
    tok = load_tokenizer(run.tokenizer_dir, cfg.tokenizer.sep_token)
    prompts = load_datasets(cfg).eval_prompts
    e = cfg.eval
    n = e.samples if samples is None else samples
    start_ray(cfg.cluster)
    placement = Placement.create(cfg.cluster, with_critic=False)
    results: list[tuple[str, dict]] = []
    try:
        for name, path in policies:
            engines = RolloutGroup(str(path), cfg.cluster, placement, seed=cfg.run.seed,
                                   max_model_len=cfg.model.max_seq_len)
            try:
                r = gold_eval(engines, tok, prompts, e.max_new_tokens, max_prompt_len(cfg), temperature, n,
                              stage_seed(cfg.run.seed, "eval"))
            finally:
                engines.shutdown()
            results.append((name, r))
            print(f"{name}: gold helpfulness {r['gold_helpfulness']:.3f} at T={temperature}", flush=True)
    finally:
        placement.release()
        if cfg.cluster.mode == "local":
            import ray

            ray.shutdown()
    out = run.root / f"eval_T{temperature:g}.json"
    out.write_text(json.dumps({name: r for name, r in results}, indent=1))
    print(tables(results))
    print(f"results in {out}")
    return 0


def tables(results: list[tuple[str, dict]]) -> str:
    from llama_rlhf.orchestrator.report import gold_table, kind_rows

    return gold_table(results) + "\n\nBy prompt kind (unsafe: gold safety; the others: gold helpfulness):\n\n" + \
        kind_rows(results)
