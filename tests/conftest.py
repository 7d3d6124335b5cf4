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
