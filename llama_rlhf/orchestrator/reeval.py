"""`llama-rlhf eval RUN --temperature T [T ...] [--gatt-dialogs N]`: the gold judge on every saved policy
of a finished (or stopped) run, sampled at other temperatures than the run's `eval.temperature` (0 =
greedy), and Ghost Attention on more held-out dialogs than the run's own.

The run's own evaluation samples at `eval.temperature` (with `eval.greedy`, greedy answers are judged too).
How a policy is sampled changes what its gold figures say (sampling at T = 1 spreads probability over
wrong answers that greedy decoding never emits), and RLHF can move the two in opposite directions: this
re-evaluation judges any temperature (and runs made before `eval.greedy`) on the same held-out prompts and
seed as the run's. Each saved checkpoint is loaded from its files into a rollout engine of the run's
cluster config (the same vLLM path as the pipeline's evaluation); nothing is trained and the run's state
is not touched: the results go to `eval_T<T>.json` / `gatt_N<N>.json` in the run folder and the tables to
stdout.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
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


def rejudge(run_dir: str | Path, temperatures: list[float], samples: int | None = None,
            gatt_dialogs: int | None = None) -> int:
    """Every saved policy judged again at each of `temperatures` (-> eval_T<T>.json) and, with
    `gatt_dialogs`, for Ghost Attention on that many held-out dialogs (-> gatt_N<N>.json): one rollout
    engine loads each policy once and every judgement runs on it."""
    from llama_rlhf.config import load_config
    from llama_rlhf.orchestrator.datasets import load_datasets
    from llama_rlhf.orchestrator.evaluation import gatt_consistency, gold_eval
    from llama_rlhf.orchestrator.report import gatt_rows_table, versions
    from llama_rlhf.orchestrator.stages import max_prompt_len, stage_seed

    cfg, run, tok = _open(run_dir)
    e, plen = cfg.eval, max_prompt_len(cfg)
    n = e.samples if samples is None else samples
    jobs: list[_Job] = []
    if temperatures:
        prompts = load_datasets(cfg).eval_prompts
    for t in temperatures:
        jobs.append(_Job(
            run.root / f"eval_T{t:g}.json",
            lambda engines, t=t: gold_eval(engines, tok, prompts, e.max_new_tokens, plen, t, n,
                                           stage_seed(cfg.run.seed, "eval")),
            lambda r, t=t: f"gold helpfulness {r['gold_helpfulness']:.3f} at T={t:g}",
            tables))
    if gatt_dialogs is not None:
        # the run's first `data.world.n_gatt_eval` dialogs are the ones its own evaluation used: its 32 give
        # an interval of about +-0.16 on a kept rate, too wide to tell 0.6 from 0.9
        held_out = load_datasets(load_config(run.config_path, [f"data.world.n_gatt_eval={gatt_dialogs}"])).gatt_eval
        if not held_out:
            raise RunDirError(f"{run.root}: its world has no GAtt evaluation dialogs (data.world.gatt_eval_turns)")
        turns = cfg.data.world.gatt_eval_turns
        trained = {name: g for name, _, g in versions(run)}
        jobs.append(_Job(
            run.root / f"gatt_N{gatt_dialogs}.json",
            lambda engines: {"gatt": gatt_consistency(engines, tok, held_out, turns, e.max_new_tokens, plen)},
            lambda r: f"instruction kept at turn {turns}: {r['gatt']['kept'][-1]:.2f}",
            lambda results: gatt_rows_table([(name, r, trained.get(name, False)) for name, r in results])))
    for job, results in zip(jobs, _each_policy(cfg, run, jobs)):
        job.out.write_text(json.dumps({name: r for name, r in results}, indent=1))
        print(job.table(results))
        print(f"results in {job.out}")
    return 0


@dataclass
class _Job:
    """One judgement of every saved policy: where its results go, how one policy is judged on the engines,
    the line printed as each policy ends, and the table of all of them."""
    out: Path
    judge: Callable[[object], dict]
    line: Callable[[dict], str]
    table: Callable[[list[tuple[str, dict]]], str]


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


def _each_policy(cfg, run: RunDir, jobs: list[_Job]) -> list[list[tuple[str, dict]]]:
    """Per job, [(policy name, job.judge(engines))] over every saved policy. One rollout group of the run's
    cluster config starts from the first policy's folder and loads each next one from disk in place
    (`RolloutGroup.load_folder`: the reload a weight sync runs, from the checkpoint's files)."""
    from llama_rlhf.actors.rollout import RolloutGroup
    from llama_rlhf.orchestrator.cluster import Placement, start_ray

    policies = saved_policies(run)
    start_ray(cfg.cluster)
    placement = Placement.create(cfg.cluster, ppo=())
    results: list[list[tuple[str, dict]]] = [[] for _ in jobs]
    engines = None
    try:
        for name, path in policies:
            if engines is None:
                engines = RolloutGroup(str(path), cfg.cluster, placement, seed=cfg.run.seed,
                                       max_model_len=cfg.model.max_seq_len)
            else:
                engines.load_folder(path)
            for job, out in zip(jobs, results):
                r = job.judge(engines)
                out.append((name, r))
                print(f"{name}: {job.line(r)}", flush=True)
    finally:
        if engines is not None:
            engines.shutdown()
        placement.release()
        if cfg.cluster.mode == "local":
            import ray

            ray.shutdown()
    return results


def tables(results: list[tuple[str, dict]]) -> str:
    from llama_rlhf.orchestrator.report import gold_table, kind_rows

    return gold_table(results) + "\n\nBy prompt kind (unsafe: gold safety; the others: gold helpfulness):\n\n" + \
        kind_rows(results)
