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
