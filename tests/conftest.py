"""Shared fixtures. Nothing here fakes Ray, DeepSpeed or vLLM: tests that need them start the real ones."""

import os

# Triton kernels run on CPU tensors only under the interpreter; must be set before triton is imported.
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    from llama_rlhf.tokenizer import shipped_corpus, train_tokenizer

    return train_tokenizer(shipped_corpus(), tmp_path_factory.mktemp("tok"), vocab_size=1024)


CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def make_bpe_folder(folder, chat_template: str | None = CHATML):
    """A byte-level BPE tokenizer.json trained on the shipped corpus (no tokenizer.model), saved by transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from llama_rlhf.tokenizer import shipped_corpus

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(shipped_corpus(), trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    hf = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                 pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    hf.chat_template = chat_template
    hf.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def bpe_chat_folder(tmp_path_factory):
    """A tokenizer.json-only folder with a ChatML chat template (the shape of SmolLM2's)."""
    return make_bpe_folder(tmp_path_factory.mktemp("chatml"))


@pytest.fixture(scope="session")
def ray_local(tmp_path_factory):
    """One real local Ray for the whole session (2 CPUs, bound to 127.0.0.1, no dashboard)."""
    import tempfile

    import ray

    if not ray.is_initialized():
        # Ray's socket paths must stay short: a temp dir under /tmp, not pytest's deep tmp_path
        tmp = tempfile.mkdtemp(prefix="rt_", dir="/tmp")
        ray.init(num_cpus=2, include_dashboard=False, _temp_dir=tmp, _node_ip_address="127.0.0.1",
                 log_to_driver=False)
    yield ray
    ray.shutdown()
