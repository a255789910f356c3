"""SFT: the toy style is learned, held-out early stopping, exact resume, and a saved run loads for generation."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from conftest import make_tiny_llama
from personalign.backends.hf import HFBackend, sequence_logprobs
from personalign.config import ModelConfig, SamplingConfig
from personalign.errors import ProfileError
from personalign.methods.base import build_personalizer, load_personalizer
from personalign.methods.sft import SFTMethod, split_holdout
from personalign.profiles.loading import parse_profile
from personalign.profiles.schema import Profile
from personalign.runs import RunDir

SIGNATURE = "\n\nCheers,\nZed"
NAMES = ["Al", "Bo", "Cy", "Di", "Ed", "Flo"]


def toy_profile() -> Profile:
    return parse_profile({
        "name": "Zed Toy", "task": "write notes",
        "demonstrations": [{"prompt": f"Greet {n}.", "output": f"Hi {n}, good to see you.{SIGNATURE}"} for n in NAMES],
        "constraints": {"sign_off": "Cheers,\nZed"},
    })


def signature_logprob(backend: HFBackend, prompt: str, body: str) -> float:
    """log p(signature + end-of-turn | prompt, body) under the backend's current model."""
    conv = [{"role": "user", "content": prompt}]
    prompt_ids, completion = backend.prompt_completion_ids(conv, body + SIGNATURE)
    body_ids = backend.tokenizer(body, add_special_tokens=False)["input_ids"]
    assert completion[: len(body_ids)] == body_ids
    with torch.no_grad():
        return float(sequence_logprobs(backend.model, [(prompt_ids + body_ids, completion[len(body_ids):])],
                                       backend.tokenizer.pad_token_id, backend.device)[0])


ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
QUICK = {"max_steps": 16, "lr": 1e-2, "batch_size": 3, "val_fraction": 0.0, "synthetic": {"n_keep": 0},
         "lora": {"r": 8, "dropout": 0.0, "target_modules": ALL_LINEAR}}


def test_sft_raises_logprob_of_the_signature(tiny_backend, tmp_path):
    before = signature_logprob(tiny_backend, "Greet Gus.", "Hi Gus, good to see you.")
    method = build_personalizer("sft", tiny_backend, QUICK)
    method.fit(toy_profile(), RunDir(tmp_path / "run"))
    after = signature_logprob(tiny_backend, "Greet Gus.", "Hi Gus, good to see you.")
    assert after > before + 2.0  # an unseen prompt: the style, not one example, was learned
    losses = [r["loss"] for r in RunDir(tmp_path / "run").metrics if r.get("phase") == "sft"]
    assert losses[-1] < losses[0]
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").is_file()


def test_early_stopping_keeps_best_held_out_weights(tiny_backend, tmp_path):
    assert split_holdout(6, 0.2, 0) == split_holdout(6, 0.2, 0)
    train, val = split_holdout(6, 0.2, 0)
    assert len(val) == 1 and sorted(train + val) == list(range(6))
    assert split_holdout(3, 0.5, 0) == ([0, 1, 2], [])
    # A learning rate far too high makes held-out loss rise after the first evaluation: training must stop.
    config = {**QUICK, "lr": 0.5, "val_fraction": 0.2, "eval_every": 1, "patience": 2, "max_steps": 20}
    method = build_personalizer("sft", tiny_backend, config)
    method.fit(toy_profile(), RunDir(tmp_path / "run"))
    rows = RunDir(tmp_path / "run").metrics
    done = next(r for r in rows if r.get("phase") == "sft_done")
    assert done["early_stopped"] and done["steps"] < 20
    assert done["best_val_loss"] == min(r["val_loss"] for r in rows if "val_loss" in r)


def test_resume_reproduces_the_uninterrupted_run(chat_tokenizer, tmp_path):
    def backend() -> HFBackend:
        return HFBackend(ModelConfig(device="cpu", dtype="fp32"), model=make_tiny_llama(chat_tokenizer, seed=1),
                         tokenizer=chat_tokenizer)

    config = {**QUICK, "max_steps": 6, "checkpoint_every": 2, "keep_checkpoints": 3, "lr": 1e-3,
              "lora": {"r": 4, "dropout": 0.1}, "batch_size": 2}  # dropout on: the RNG state must be restored too
    full = tmp_path / "full"
    build_personalizer("sft", backend(), config).fit(toy_profile(), RunDir(full))
    # Simulate a crash right after the step-2 checkpoint: later checkpoints, adapter and metrics never happened.
    crashed = tmp_path / "crashed"
    shutil.copytree(full, crashed)
    for name in ("step-000004", "step-000006"):
        shutil.rmtree(crashed / "checkpoints" / name)
    shutil.rmtree(crashed / "adapter")
    (crashed / "metrics.jsonl").write_text(
        "".join(line + "\n" for line in (full / "metrics.jsonl").read_text().splitlines()
                if json.loads(line).get("step", 99) <= 2))
    build_personalizer("sft", backend(), {**config, "resume": True}).fit(toy_profile(), RunDir(crashed))

    def losses(path):
        return {r["step"]: r["loss"] for r in RunDir(path).metrics if r.get("phase") == "sft"}

    assert losses(crashed) == losses(full)  # bit-identical, the next step after resuming included
    a = torch.load(full / "checkpoints" / "step-000006" / "weights.pt")
    b = torch.load(crashed / "checkpoints" / "step-000006" / "weights.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_saved_run_loads_for_generation(chat_tokenizer, tmp_path):
    folder = tmp_path / "tiny-model"
    make_tiny_llama(chat_tokenizer, seed=2).save_pretrained(folder)
    chat_tokenizer.save_pretrained(folder)
    trained = HFBackend(ModelConfig(model=str(folder), device="cpu", dtype="fp32"))
    method = build_personalizer("sft", trained, {**QUICK, "max_steps": 4})
    method.fit(toy_profile(), RunDir(tmp_path / "run"))
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=6)
    loaded = load_personalizer(tmp_path / "run")
    assert isinstance(loaded, SFTMethod) and type(loaded.backend.model).__name__.startswith("Peft")
    assert loaded.generate(["Greet Gus."], greedy) == method.generate(["Greet Gus."], greedy)
    base = HFBackend(ModelConfig(model=str(folder), device="cpu", dtype="fp32"))
    conv = [{"role": "user", "content": "Greet Gus."}]
    reply = "Hi Gus, good to see you." + SIGNATURE
    assert loaded.backend.logprobs([conv], [reply])[0] > base.logprobs([conv], [reply])[0]


def test_profile_without_demonstrations_is_rejected(tiny_backend):
    empty = Profile.model_construct(name="No Demos", task="t", demonstrations=[])
    with pytest.raises(ProfileError, match="demonstrations"):
        build_personalizer("sft", tiny_backend, QUICK).fit(empty)


def test_full_fine_tuning_saves_a_whole_model_that_loads(chat_tokenizer, tmp_path):
    folder = tmp_path / "tiny-model"
    make_tiny_llama(chat_tokenizer, seed=4).save_pretrained(folder)
    chat_tokenizer.save_pretrained(folder)
    backend = HFBackend(ModelConfig(model=str(folder), device="cpu", dtype="fp32"))
    method = build_personalizer("sft", backend, {**QUICK, "max_steps": 2, "lora": {"enabled": False}})
    method.fit(toy_profile(), RunDir(tmp_path / "run"))
    assert (tmp_path / "run" / "model" / "config.json").is_file()
    assert not (tmp_path / "run" / "adapter").exists()
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=6)
    assert load_personalizer(tmp_path / "run").generate(["Greet Gus."], greedy) == method.generate(["Greet Gus."],
                                                                                                     greedy)


def test_stop_below_loss_ends_training_at_the_first_step_under_it(tiny_backend):
    from personalign.engines.base import LoraSettings
    from personalign.engines.local import LocalEngine
    from personalign.methods.sft import SFTConfig, run_sft

    engine = LocalEngine(tiny_backend, LoraSettings(r=4, dropout=0.0))
    conv = [{"role": "user", "content": "Greet Al."}]
    pairs = [tiny_backend.prompt_completion_ids(conv, "Hi Al." + SIGNATURE)] * 4
    first = run_sft(engine, pairs, SFTConfig(max_steps=6, batch_size=2, val_fraction=0.0, lr=1e-3,
                                             stop_below_loss=1e6), None, progress=False)
    assert first["steps"] == 1  # a random model's loss (~ln 49k ≈ 10.8) is below 1e6 at once
    rest = run_sft(engine, pairs, SFTConfig(max_steps=3, batch_size=2, val_fraction=0.0, lr=1e-3,
                                            stop_below_loss=0.01), None, progress=False)
    assert rest["steps"] == 3  # never below 0.01 in 3 steps: max_steps caps it
