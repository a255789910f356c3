"""Shared fixtures: the default model's tokenizer, tiny random chat models built in-test, temp run dirs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    """The converted embedded default model (converted once per machine, then cached)."""
    from personalign.backends.default_model import ensure_default_model

    return ensure_default_model(progress=False)


@pytest.fixture(scope="session")
def chat_tokenizer(default_model_dir: Path):
    """The real SmolLM2 tokenizer and chat template (fast to load; no weights)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_model_dir)


def make_tiny_llama(tokenizer, seed: int = 0, hidden: int = 32, layers: int = 2):
    """A randomly initialized llama with the real tokenizer's vocabulary: fast enough for unit tests."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config).eval()


def crash_after_checkpoint(run: Path, crashed: Path, step: int) -> Path:
    """`crashed`: a copy of the finished run dir `run` as a crash right after its step-`step` checkpoint would
    have left it (later checkpoints, the adapter, the end-of-run files and later metrics rows absent)."""
    import json
    import shutil

    shutil.copytree(run, crashed)
    for checkpoint in (crashed / "checkpoints").iterdir():
        if int(checkpoint.name.rsplit("-", 1)[1]) > step:
            shutil.rmtree(checkpoint)
    shutil.rmtree(crashed / "adapter")
    for name in ("method.json", "training_data.json"):
        (crashed / name).unlink()
    rows = (crashed / "metrics.jsonl").read_text().splitlines()
    kept = [r for r in rows if json.loads(r).get("step", step + 1) <= step]  # the end-of-run row has no step
    (crashed / "metrics.jsonl").write_text("".join(r + "\n" for r in kept))
    return crashed


@pytest.fixture
def tiny_backend(chat_tokenizer):
    """An HFBackend around a tiny random llama (CPU, fp32)."""
    from personalign.backends.hf import HFBackend
    from personalign.config import ModelConfig

    return HFBackend(ModelConfig(device="cpu", dtype="fp32"), model=make_tiny_llama(chat_tokenizer),
                     tokenizer=chat_tokenizer)


@pytest.fixture
def one_torch_thread():
    """Run torch on one thread: tiny models are far faster that way (no spin-waiting threads on a busy CPU)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def example_profile_path() -> Path:
    return REPO / "configs" / "profiles" / "example.yaml"


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/datasets is not present on this machine")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _quiet_hf(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_VERBOSITY", "error")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    if "WANDB_MODE" not in os.environ:
        monkeypatch.setenv("WANDB_MODE", "offline")


@pytest.fixture(scope="session")
def tinker_server(tmp_path_factory):
    """One skyrl-tx server (`make tinker-venv`) on a free loopback port for every `tinker` test of the session,
    stopped (with its engine child) by its process group's id; skips when the venv is absent.

    Its JAX compiles are most of these tests' time, so every test's calls share its compiled shapes:
    `train_micro_batch_size: 1` runs every forward and forward_backward as batch-1 micro-batches (one compile per
    sequence-length bucket, whatever the batch: DPO's pair reuses SFT's), and `sample_max_num_sequences: 1`
    one sampling shape for the tests' one-prompt samples (which also share their max_new_tokens)."""
    venv = Path(os.environ.get("PERSONALIGN_TINKER_VENV", REPO / ".venv-tinker"))
    if not (venv / ".installed").is_file():
        pytest.skip(f"no skyrl-tx venv at {venv} (build it with `make tinker-venv`)")
    pytest.importorskip("tinker")
    from personalign.engines.tinker_server import BACKEND_CONFIG, LocalTinkerServer
    from personalign.settings import cache_dir

    # One adapter slot per training client of the session (slot 0 is the base model's): SFT, DPO, the CLI run.
    # (Each new client also costs one optim_step compile: skyrl-tx builds each client's optax transform anew.)
    config = {**BACKEND_CONFIG, "max_lora_adapters": 4, "train_micro_batch_size": 1, "sample_max_num_sequences": 1}
    # JAX's compile cache lives with personalign's other caches ($PERSONALIGN_CACHE), never in the checkout.
    server = LocalTinkerServer(venv, venv / "model", tmp_path_factory.mktemp("tinker-server"), backend_config=config,
                               compile_cache=cache_dir() / "jax-tinker")
    key = os.environ.get("TINKER_API_KEY")
    os.environ["TINKER_API_KEY"] = "tml-local-test"  # skyrl-tx accepts any key of the SDK's form
    try:
        with server:
            yield server
    finally:
        if key is None:
            os.environ.pop("TINKER_API_KEY", None)
        else:
            os.environ["TINKER_API_KEY"] = key
    assert server.process is None
