"""Any Llama-architecture HF checkpoint as `model.init_checkpoint`: a tiny random Llama saved by stock
transformers (sharded safetensors, tied embeddings, GQA, a tokenizer.json with a chat template) gives the
shape, the tokenizer and the weights; what we write with the tokenizer loads back in stock transformers."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from llama_rlhf.actors.loading import INDEX_NAME, load_streamed
from llama_rlhf.config import TokenizerConfig, build_config
from llama_rlhf.models import check_init_checkpoint, save_hf
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
