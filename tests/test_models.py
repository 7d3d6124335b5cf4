import torch
from transformers import LlamaForCausalLM, LlamaForSequenceClassification

from llama_rlhf.models import (
    PRESETS,
    build_causal_lm,
    build_scalar_model,
    count_parameters,
    llama_config,
    save_hf,
    scalar_from_causal_lm,
)


def _real_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_param_count_formula_matches_allocated_tiny():
    cfg = llama_config("tiny", vocab_size=1000)
    assert count_parameters(cfg) == _real_count(build_causal_lm(cfg))
    assert count_parameters(cfg, lm_head=False) == _real_count(build_scalar_model(cfg))


def test_paper_shapes_from_config_only():
    # Counted from the config, nothing allocated. Paper / released checkpoints: 6.74B, 13.0B, 33.7B, 69.0B.
    expect = {"7b": 6.74e9, "13b": 13.02e9, "34b": 33.74e9, "70b": 68.98e9}
    for name, n in expect.items():
        got = count_parameters(llama_config(name))
        assert abs(got - n) / n < 0.01, (name, got)
    c70 = llama_config("70b")
    assert c70.num_key_value_heads == 8 and c70.num_attention_heads == 64
    assert llama_config("34b").num_key_value_heads == 8
    assert c70.max_position_embeddings == 4096 and c70.vocab_size == 32000
    tiny = PRESETS["tiny"]
    assert tiny.num_attention_heads // tiny.num_key_value_heads == 4  # GQA 4:1
    assert 1e6 < count_parameters(llama_config("tiny")) < 1e7


def test_checkpoint_loads_in_plain_transformers(tmp_path):
    cfg = llama_config("tiny", vocab_size=300)
    ours = build_causal_lm(cfg, seed=0).eval()
    save_hf(ours, tmp_path / "lm")
    theirs = LlamaForCausalLM.from_pretrained(tmp_path / "lm").eval()  # stock transformers, no llama_rlhf
    ids = torch.randint(3, 300, (2, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(ours(ids).logits, theirs(ids).logits)


def test_scalar_model_round_trip_and_init_from_lm(tmp_path):
    cfg = llama_config("tiny", vocab_size=300)
    lm = build_causal_lm(cfg, seed=0)
    rm = scalar_from_causal_lm(lm, seed=1).eval()
    for k, v in lm.model.state_dict().items():
        assert torch.equal(v, rm.model.state_dict()[k])
    save_hf(rm, tmp_path / "rm")
    theirs = LlamaForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    ids = torch.randint(3, 300, (3, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = rm(ids).logits, theirs(ids).logits
    assert a.shape == (3, 1) and torch.equal(a, b)
