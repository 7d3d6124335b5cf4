"""Reward scoring with and without the padding, side by side in one run.

A scoring batch is [left-padded prompt | right-padded response] rows, padded to its longest prompt plus
its longest response. The groups sort rows by length and deal them to the ranks; each rank packs each row
chunk's real tokens into as few rows as first-fit allows (`algorithms.batching.pack_rows`, attention kept
inside each row's segment) and reads each score at its row's last token. This script measures what that
saves on the demo's own shapes: `configs/local.yaml`'s world, tokenizer and model preset; the RS
candidates of one version (`--prompts` RLHF prompts x `--samples` responses, the responses being the
world's SFT answers cut at the config's `rejection_sampling.max_new_tokens`).

Three reward-model groups score the same batch back to back, `--repeats` times, median of `--steps`
calls: "packed" is the pipeline's path; "trimmed" runs each chunk padded, without the columns that are
padding on every row (the path before packing); "padded" keeps the batch's whole width (the path before
both). The two others are the same group with `DeepSpeedModel.run_scores` replaced inside its rank
processes. Scores must agree to 1e-5.

    .venv/bin/python benchmarks/scoring.py [--ranks 1] [--prompts 128] [--samples 4]

About a minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))

ROOT = Path(__file__).resolve().parents[1]


def _unpacked(self, trim: bool) -> None:
    """Inside a rank: reward scores from the padded rows ("scores"), the columns that are padding on every
    row cut first when `trim`."""
    from llama_rlhf.actors.engine import DeepSpeedModel

    def run_scores(m, ids, mask):
        if trim:
            real = mask.bool().any(0).nonzero()
            ids, mask = ids[:, int(real[0]) : int(real[-1]) + 1], mask[:, int(real[0]) : int(real[-1]) + 1]
        return m.run({"input_ids": ids, "attention_mask": mask}, out="scores")

    DeepSpeedModel.run_scores = run_scores


def candidates(cfg, tok, n_prompts: int, samples: int, seed: int = 0):
    """The RS candidate batch of one version on the config's world."""
    from llama_rlhf.actors.batches import sequence_batch
    from llama_rlhf.data.chat import encode_response
    from llama_rlhf.data.world import build_world
    from llama_rlhf.orchestrator.datasets import prompt_token_ids

    world = build_world(cfg.data.world, seed=cfg.run.seed)
    max_new = cfg.rejection_sampling.max_new_tokens
    prompts = prompt_token_ids(tok, world.rlhf_prompts()[:n_prompts], cfg.model.max_seq_len - max_new)
    answers = [encode_response(tok, r.messages[-1]["content"])[:max_new] for r in world.sft_records()]
    rng = random.Random(seed)
    flat_p = [p for p in prompts for _ in range(samples)]
    return sequence_batch(flat_p, [rng.choice(answers) for _ in flat_p], tok.pad_id)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "local.yaml"))
    ap.add_argument("--ranks", type=int, default=1, help="ranks of each reward-model group")
    ap.add_argument("--prompts", type=int, default=128)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3)
    a = ap.parse_args()

    import ray
    import torch

    from llama_rlhf.actors.engine import ModelSpec, ZeroSpec
    from llama_rlhf.actors.remote import RewardGroup
    from llama_rlhf.config import load_config
    from llama_rlhf.models import build_causal_lm, llama_config, save_hf, scalar_from_causal_lm
    from llama_rlhf.tokenizer import tokenizer_from_config

    cfg = load_config(a.config)
    work = Path(tempfile.mkdtemp(prefix="bench_scoring_"))
    tok = tokenizer_from_config(cfg.tokenizer, work)
    mcfg = llama_config(cfg.model.preset, vocab_size=tok.vocab_size, max_seq_len=cfg.model.max_seq_len,
                        pad_token_id=tok.pad_id, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id)
    folder = str(save_hf(scalar_from_causal_lm(build_causal_lm(mcfg, seed=0), seed=1), work / "rm"))
    seq = candidates(cfg, tok, a.prompts, a.samples)
    real = float(seq.attention_mask.sum()) / seq.attention_mask.numel()

    ray.init(address="local", num_cpus=os.cpu_count(), num_gpus=0, include_dashboard=False, log_to_driver=False,
             _temp_dir=tempfile.mkdtemp(prefix="rb_", dir="/tmp"), _node_ip_address="127.0.0.1")
    opts = lambda i: {"num_cpus": 0.25, "num_gpus": 0}  # noqa: E731
    groups = {}
    for name in ("packed", "trimmed", "padded"):
        groups[name] = RewardGroup("helpful", a.ranks, opts, "gloo", ZeroSpec())
        groups[name].load(ModelSpec("scalar", path=folder, seed=1))
    for name in ("trimmed", "padded"):
        ray.get([r.__ray_call__.remote(_unpacked, name == "trimmed") for r in groups[name].ranks])
    print(f"{seq.rows()} rows ({a.prompts} prompts x {a.samples}) of width {seq.input_ids.shape[1]} "
          f"({seq.response_len} response columns): {real:.0%} of the positions are real tokens; "
          f"{a.ranks} rank(s), {os.cpu_count()} CPUs", flush=True)

    scores = {k: g.score(seq) for k, g in groups.items()}  # warm-up, and the agreement check
    gap = max(float((scores["packed"] - scores[k]).abs().max()) for k in ("trimmed", "padded"))
    rates: dict[str, list[float]] = {k: [] for k in groups}
    for r in range(a.repeats):
        for k, g in groups.items():
            walls = []
            for _ in range(a.steps):
                t0 = time.perf_counter()
                g.score(seq)
                walls.append(time.perf_counter() - t0)
            rates[k].append(seq.rows() / statistics.median(walls))
        print(f"  repeat {r + 1}: " + ", ".join(f"{k} {v[-1]:,.0f} rows/s" for k, v in rates.items()), flush=True)
    for g in groups.values():
        g.kill()
    ray.shutdown()
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"\nRM scoring, rows/s (median of {a.repeats} repeats): packed {med['packed']:,.0f}, "
          f"trimmed {med['trimmed']:,.0f}, padded {med['padded']:,.0f}; packed/padded "
          f"{med['packed'] / med['padded']:.2f}x, packed/trimmed {med['packed'] / med['trimmed']:.2f}x; "
          f"max score difference {gap:.1e}")
    if gap > 1e-5 or not torch.isfinite(scores["packed"]).all():
        raise SystemExit(f"scores differ by {gap:.1e} between the two paths")


if __name__ == "__main__":
    main()
