"""Any Llama-architecture HF checkpoint as `model.init_checkpoint`: a tiny random Llama saved by stock
transformers (sharded safetensors, tied embeddings, GQA, a tokenizer.json with a chat template) gives the
shape, the tokenizer and the weights; what we write with the tokenizer loads back in stock transformers."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from llama_rlhf.actors.loading import INDEX_NAME, check_init_checkpoint, load_streamed
from llama_rlhf.config import TokenizerConfig, build_config
from llama_rlhf.models import save_hf
from llama_rlhf.plan import model_shape
from llama_rlhf.tokenizer import load_tokenizer, tokenizer_from_config

LLAMA2_TOKENIZER = Path(__file__).parent / "fixtures" / "llama2_tokenizer"


@pytest.fixture(scope="module")
def hf_checkpoint(tmp_path_factory, bpe_chat_folder):
    """SmolLM2's layout at toy size: tied embeddings, GQA 6:2, its tokenizer.json and chat template."""
    folder = tmp_path_factory.mktemp("smol")
    cfg = LlamaConfig(vocab_size=600, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(folder, max_shard_size="60KB")
    for f in Path(bpe_chat_folder).iterdir():
        shutil.copy2(f, folder / f.name)
    return folder


def test_shape_and_tokenizer_come_from_the_folder(hf_checkpoint, tmp_path):
    assert (hf_checkpoint / INDEX_NAME).is_file() and not (hf_checkpoint / "tokenizer.model").exists()
    cfg = build_config({"model": {"init_checkpoint": str(hf_checkpoint), "preset": "7b"}})
    shape = model_shape(cfg)
    assert (shape.hidden, shape.layers, shape.heads, shape.kv_heads, shape.vocab) == (48, 2, 6, 2, 600)
    tok = tokenizer_from_config(TokenizerConfig(), tmp_path, str(hf_checkpoint))
    assert tok.folder == hf_checkpoint and tok.chat_template is not None
    assert check_init_checkpoint(hf_checkpoint, tok.vocab_size)["tie_word_embeddings"] is True


def test_weights_stream_in_from_sharded_tied_checkpoint(hf_checkpoint):
    theirs = LlamaForCausalLM.from_pretrained(hf_checkpoint).eval()
    ours = LlamaForCausalLM(LlamaConfig.from_pretrained(hf_checkpoint)).eval()
    report = load_streamed(ours, hf_checkpoint, rank=0)  # no ZeRO partitions here: plain tensors
    assert report["missing"] == [] and report["unused"] == []
    ids = torch.randint(3, 600, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(ours(ids).logits, theirs(ids).logits)


def test_bad_init_checkpoints_are_refused_in_one_line(hf_checkpoint, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(hf_checkpoint, bare)
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (bare / f).unlink()
    with pytest.raises(FileNotFoundError, match=r"^model.init_checkpoint: .* holds neither tokenizer.model nor "
                                                r"tokenizer.json; set tokenizer.path$"):
        tokenizer_from_config(TokenizerConfig(), tmp_path, str(bare))
    with pytest.raises(ValueError, match="embedding has 600 rows, the tokenizer has 32000 tokens"):
        check_init_checkpoint(hf_checkpoint, 32000)
    cfg = json.loads((bare / "config.json").read_text())
    (bare / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt2"}))
    with pytest.raises(ValueError, match="model_type 'gpt2'; only Llama-architecture"):
        check_init_checkpoint(bare, 600)
    (bare / "config.json").write_text(json.dumps(cfg))
    (bare / INDEX_NAME).unlink()
    with pytest.raises(ValueError, match="model.init_checkpoint: .*no model.safetensors"):
        check_init_checkpoint(bare, 600)


@pytest.mark.parametrize("which", ["tokenizer.json", "tokenizer.model"])
def test_what_we_write_loads_in_stock_transformers(hf_checkpoint, tmp_path, which):
    tok = load_tokenizer(hf_checkpoint if which == "tokenizer.json" else LLAMA2_TOKENIZER)
    cfg = LlamaConfig.from_pretrained(hf_checkpoint)
    cfg.vocab_size = max(cfg.vocab_size, tok.vocab_size)
    model = LlamaForCausalLM(cfg).eval()
    out = save_hf(model, tmp_path / "ckpt")
    tok.save(out)
    theirs_tok = AutoTokenizer.from_pretrained(out)  # stock transformers, nothing of ours
    theirs = LlamaForCausalLM.from_pretrained(out).eval()
    text = "What is 3 plus 4? The answer is 7."
    assert theirs_tok.encode(text, add_special_tokens=False) == tok.encode(text)
    ids = torch.tensor([tok.encode(text)])
    with torch.no_grad():
        assert torch.equal(theirs(ids).logits, model(ids).logits)
    if which == "tokenizer.json":
        assert theirs_tok.chat_template == tok.chat_template


@pytest.mark.slow  # a DeepSpeed engine in this process (a few seconds)
def test_tied_head_trains_and_saves_as_one_tensor_under_zero3(hf_checkpoint, bpe_chat_folder, tmp_path):
    """A tied checkpoint (SmolLM2's layout) built partitioned keeps its head tied: the SFT gradient of the
    one shared tensor is transformers' (embedding and head contributions summed), and the saved folder holds
    it once, loads tied in stock transformers with the trained weights, and starts a reward model."""
    import os

    from deepspeed.utils import safe_get_full_grad

    from llama_rlhf.actors.engine import DistSpec, ModelSpec, OptimSpec, ZeroSpec
    from llama_rlhf.actors.policy import PolicyTrainer
    from llama_rlhf.actors.scalar import RewardModelTrainer
    from llama_rlhf.algorithms.sft import sft_loss
    from llama_rlhf.data.records import SFTRecord
    from llama_rlhf.orchestrator.datasets import packed_batches
    from llama_rlhf.passes import packed_forward

    saved = dict(os.environ)
    tok = load_tokenizer(hf_checkpoint)
    recs = [SFTRecord([{"role": "user", "content": f"What is {i} plus {i}?"},
                       {"role": "assistant", "content": f"The answer is {2 * i}."}]) for i in range(6)]
    batch = packed_batches(tok, recs, 64, 4, seed=0)[0][0]
    hf = LlamaForCausalLM.from_pretrained(hf_checkpoint, dtype=torch.float32, attn_implementation="sdpa")
    sft_loss(packed_forward(hf, batch.to_dict()), batch.labels).backward()
    want = hf.model.embed_tokens.weight.grad
    try:
        role = PolicyTrainer(DistSpec(0, 1), ZeroSpec(stage=3, param_persistence_threshold=0))
        role.load(ModelSpec("causal", path=str(hf_checkpoint)), OptimSpec(lr=1e-2, schedule="constant"))
        m = role.m.module
        assert m.lm_head.weight is m.model.embed_tokens.weight
        grads, real = {}, role.m.engine.step

        def step(*a, **k):
            grads.setdefault("embed", safe_get_full_grad(m.model.embed_tokens.weight).detach().clone())
            return real(*a, **k)

        role.m.engine.step = step
        role.sft_step(batch, 1)
        torch.testing.assert_close(grads["embed"], want, rtol=1e-5, atol=1e-7)
        # one rank reads its partitions instead of gathering (engine.Role._unsharded): the same tensors
        import deepspeed

        assert all(role.m._unsharded(p) is not None for p in m.parameters())
        direct = {n: t.clone() for n, t in role.m.named_gathered_parameters(2**30)}
        assert direct.keys() == {n for n, _ in m.named_parameters()}
        for n, p in m.named_parameters():
            with deepspeed.zero.GatheredParameters([p]):
                assert torch.equal(direct[n], p.data), n
        role.save_hf(str(tmp_path / "sft"))
        trained = {n: t.clone() for n, t in role.m.named_full_parameters()}
        role.unload()
        from safetensors import safe_open

        with safe_open(str(tmp_path / "sft" / "model.safetensors"), "pt") as f:
            assert "lm_head.weight" not in f.keys()
        theirs = LlamaForCausalLM.from_pretrained(tmp_path / "sft", dtype=torch.float32)
        assert theirs.lm_head.weight is theirs.model.embed_tokens.weight
        assert not torch.equal(theirs.lm_head.weight, hf.lm_head.weight)  # the step moved the shared tensor
        assert all(torch.equal(theirs.get_parameter(n), t) for n, t in trained.items())
        rm = RewardModelTrainer(DistSpec(0, 1), ZeroSpec(stage=3, param_persistence_threshold=0))
        rm.load(ModelSpec("scalar", path=str(tmp_path / "sft")))  # the body read, a fresh head
        rm.unload()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_streamed_export_names_the_architecture_it_holds(hf_checkpoint, tmp_path):
    """The streamed export writes `architectures` as save_pretrained does: a causal LM built from a config
    (the from-scratch policy) has none to inherit, and a reward model read from a causal folder inherits
    "LlamaForCausalLM"; either way `is_causal_checkpoint` (which decides whether a ZeRO-0/1/2 scalar model
    gets a fresh head) must read what the folder really holds."""
    from llama_rlhf.actors.loading import save_hf_streamed
    from llama_rlhf.models import is_causal_checkpoint, llama_config, load_scalar_model

    lm = LlamaForCausalLM(llama_config("tiny", vocab_size=256, max_seq_len=64))
    assert lm.config.architectures is None
    save_hf_streamed(lm, tmp_path / "causal", lm.named_parameters(), write=True)
    rm = load_scalar_model(hf_checkpoint, seed=1)
    assert rm.config.architectures == ["LlamaForCausalLM"]  # inherited from the causal folder
    save_hf_streamed(rm, tmp_path / "scalar", rm.named_parameters(), write=True)
    assert json.loads((tmp_path / "causal" / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    assert is_causal_checkpoint(tmp_path / "causal") and not is_causal_checkpoint(tmp_path / "scalar")
    again = load_scalar_model(tmp_path / "scalar", seed=2)  # a critic from this RM keeps the RM's head
    assert torch.equal(again.score.weight, rm.score.weight)
