"""Serve fixtures: a tiny model on disk and two LoRA runs trained in the test to different signatures."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import make_tiny_llama

SIGNATURES = {"zed": "Zed Zed Zed", "ann": "Ann Ann Ann"}
# Constant outputs, all linear layers, a high learning rate: the tiny random model then answers any prompt
# with its run's signature under greedy decoding, so which adapter produced a reply is unambiguous.
TRAIN = {"max_steps": 40, "lr": 2e-2, "warmup_steps": 0, "batch_size": 4, "val_fraction": 0.0,
         "synthetic": {"n_keep": 0},
         "lora": {"r": 8, "dropout": 0.0,
                  "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}}


def signature_profile(key: str):
    from personalign.profiles.loading import parse_profile

    prompts = ["Greet Al.", "Thank Bo.", "Ask Cy for the file.", "Invite Di.", "Remind Ed.", "Congratulate Flo."]
    return parse_profile({"name": f"{key.title()} Toy", "task": "write notes",
                          "demonstrations": [{"prompt": p, "output": SIGNATURES[key]} for p in prompts]})


@pytest.fixture(scope="session")
def tiny_model_dir(chat_tokenizer, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("serve") / "tiny-model"
    make_tiny_llama(chat_tokenizer).save_pretrained(path)
    chat_tokenizer.save_pretrained(path)
    return path


def train_signature_runs(model_dir: Path, root: Path) -> dict[str, Path]:
    """{"zed": run dir, "ann": run dir}: sft runs on the model in `model_dir` that answer with their signature."""
    import torch

    from personalign.config import ModelConfig
    from personalign.methods.spec import resolve_personalizer
    from personalign.runs import RunDir

    model = ModelConfig(model=str(model_dir), device="cpu", dtype="fp32")
    runs = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for key in SIGNATURES:
            run = RunDir(root / f"sft-{key}")
            resolve_personalizer("sft", profile=signature_profile(key), model=model, method_config=TRAIN, run_dir=run)
            runs[key] = run.path
    finally:
        torch.set_num_threads(threads)
    return runs


@pytest.fixture(scope="session")
def signature_runs(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    return train_signature_runs(tiny_model_dir, tmp_path_factory.mktemp("runs"))
