"""DITTO: comparison construction per kind and iteration, exact batch fractions, and training direction."""

from __future__ import annotations

import json
import random
import shutil
from collections import Counter

import pytest
import torch
from pydantic import ValidationError

from conftest import make_tiny_llama
from personalign.backends.hf import HFBackend
from personalign.config import ModelConfig
from personalign.engines.local import load_trainable_state
from personalign.methods.base import build_personalizer
from personalign.methods.ditto import DEMO, DittoConfig, allocate, build_comparisons, mix_batch
from personalign.profiles.loading import parse_profile
from personalign.runs import RunDir

FRACTIONS = {"expert": 0.7, "replay": 0.2, "intermodel": 0.1}


def toy_history(iterations: int, prompts: int = 2, n: int = 3) -> dict[int, list[list[str]]]:
    return {t: [[f"t{t}-p{p}-s{j}" for j in range(n)] for p in range(prompts)] for t in range(iterations)}


def test_comparisons_per_kind_and_iteration():
    history = toy_history(3)  # iterations 0, 1, 2; 2 prompts; 3 samples each
    pools = build_comparisons(2, history, current=2)
    assert len(pools["expert"]) == 2 * 3  # demonstration ≻ each current sample
    assert len(pools["replay"]) == 2 * 3 * 2  # demonstration ≻ each sample of iterations 0 and 1
    assert len(pools["intermodel"]) == 2 * 3 * 3 * 3  # (1≻0), (2≻0), (2≻1) × 3 × 3 samples, per prompt
    assert {c.rejected[0] for c in pools["expert"]} == {2}
    assert all(c.chosen == (DEMO, 0) for c in pools["expert"] + pools["replay"])
    assert Counter(c.rejected[0] for c in pools["replay"]) == {0: 6, 1: 6}
    assert Counter((c.chosen[0], c.rejected[0]) for c in pools["intermodel"]) == {(1, 0): 18, (2, 0): 18, (2, 1): 18}
    assert all(c.chosen[0] > c.rejected[0] for c in pools["intermodel"])  # later ≻ earlier, never reversed
    first = build_comparisons(2, toy_history(1), current=0)
    assert (len(first["expert"]), len(first["replay"]), len(first["intermodel"])) == (6, 0, 0)


def test_batches_honor_the_fractions_exactly():
    pools = build_comparisons(2, toy_history(3), current=2)
    rng = random.Random(0)
    for total, expected in [(10, {"expert": 7, "replay": 2, "intermodel": 1}),
                            (20, {"expert": 14, "replay": 4, "intermodel": 2})]:
        for _ in range(5):
            assert Counter(c.kind for c in mix_batch(pools, total, FRACTIONS, rng)) == expected
    custom = {"expert": 0.5, "replay": 0.5, "intermodel": 0.0}
    assert Counter(c.kind for c in mix_batch(pools, 8, custom, rng)) == {"expert": 4, "replay": 4}
    # Iteration 0 has no replay or intermodel pairs yet: their share goes to expert, the batch keeps its size.
    first = build_comparisons(2, toy_history(1), current=0)
    assert Counter(c.kind for c in mix_batch(first, 10, FRACTIONS, rng)) == {"expert": 10}
    # Iteration 1 has no intermodel pair... yes it does (1 ≻ 0); with only replay missing, expert and
    # intermodel split the batch 7 : 1 (largest remainder).
    assert allocate(8, FRACTIONS, {"expert": 5, "replay": 0, "intermodel": 5}) == {"expert": 7, "replay": 0,
                                                                                   "intermodel": 1}


def test_fractions_must_sum_to_one():
    with pytest.raises(ValidationError, match="must be 1"):
        DittoConfig(frac_expert=0.5, frac_replay=0.2, frac_intermodel=0.1)


def test_ditto_raises_margin_of_demonstrations_over_own_samples(tiny_backend, tmp_path):
    names = ["Al", "Bo", "Cy"]
    profile = parse_profile({"name": "Zed Toy", "task": "write notes", "demonstrations": [
        {"prompt": f"Greet {n}.", "output": f"Hi {n}.\n\nCheers,\nZed"} for n in names]})
    config = {"sft_steps": 3, "sft_lr": 1e-2, "lr": 1e-2, "iterations": 2, "steps_per_iteration": 4,
              "samples_per_prompt": 2, "pairs_per_step": 6, "sample_max_new_tokens": 8, "batch_size": 3,
              "lora": {"r": 8, "dropout": 0.0,
                       "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}}
    method = build_personalizer("ditto", tiny_backend, config)
    run = tmp_path / "run"
    method.fit(profile, RunDir(run))
    state = json.loads(next((run / "checkpoints").glob("step-000008")).joinpath("state.json").read_text())
    first_samples = state["extra"]["history"]["0"]
    convs = [[{"role": "user", "content": f"Greet {n}."}] for n in names]

    def margin() -> float:
        demo = tiny_backend.logprobs(convs, [d.output for d in profile.demonstrations])
        own = [tiny_backend.logprobs([c] * len(s), s) for c, s in zip(convs, first_samples, strict=True)]
        return sum(d - sum(o) / len(o) for d, o in zip(demo, own, strict=True)) / len(names)

    after = margin()
    load_trainable_state(tiny_backend.model, torch.load(run / "sft_warmstart" / "reference" / "weights.pt"))
    at_reference = margin()
    assert after > at_reference + 1.0  # demonstrations ≻ the policy's own iteration-0 samples, more than at π_ref
    rows = [r for r in RunDir(run).metrics if r.get("phase") == "ditto"]
    assert [r["iteration"] for r in rows] == [0, 1]
    assert rows[0]["pairs"] == {"expert": 24} and rows[1]["pairs"] == {"expert": 16, "replay": 4, "intermodel": 4}
    for key in ("dpo_loss", "reward_margin", "pair_accuracy", "mean_sample_words", "sample_compliance",
                "sampling_seconds", "optimization_seconds", "elapsed_seconds"):
        assert key in rows[-1]
    assert (run / "adapter" / "adapter_config.json").is_file()


def test_ditto_resume_after_an_interrupted_iteration_matches(chat_tokenizer, tmp_path):
    profile = parse_profile({"name": "Zed Toy", "task": "write notes", "demonstrations": [
        {"prompt": f"Greet {n}.", "output": f"Hi {n}.\n\nCheers,\nZed"} for n in ("Al", "Bo")]})
    config = {"sft_steps": 2, "iterations": 2, "steps_per_iteration": 2, "samples_per_prompt": 2, "pairs_per_step": 4,
              "sample_max_new_tokens": 6, "batch_size": 2, "lr": 1e-3, "lora": {"r": 4, "dropout": 0.1}}

    def fit(run, **extra):
        backend = HFBackend(ModelConfig(device="cpu", dtype="fp32"), model=make_tiny_llama(chat_tokenizer, seed=5),
                            tokenizer=chat_tokenizer)
        build_personalizer("ditto", backend, {**config, **extra}).fit(profile, RunDir(run))

    full, crashed = tmp_path / "full", tmp_path / "crashed"
    fit(full)
    # Crash during iteration 1: only the iteration-0 checkpoint (step 2) survived.
    shutil.copytree(full, crashed)
    shutil.rmtree(crashed / "checkpoints" / "step-000004")
    shutil.rmtree(crashed / "adapter")
    lines = (full / "metrics.jsonl").read_text().splitlines()
    (crashed / "metrics.jsonl").write_text("".join(
        line + "\n" for line in lines if json.loads(line).get("iteration", 0) == 0))
    fit(crashed, resume=True)

    def last(run):
        return [r for r in RunDir(run).metrics if r.get("phase") == "ditto"][-1]

    assert last(crashed)["iteration"] == 1
    assert last(crashed)["dpo_loss"] == last(full)["dpo_loss"]  # bit-identical after the resume
    a = torch.load(full / "checkpoints" / "step-000004" / "weights.pt")
    b = torch.load(crashed / "checkpoints" / "step-000004" / "weights.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_first_step_runs_at_the_reference_and_cut_samples_get_no_end_of_turn(tiny_backend, tmp_path):
    import math

    from personalign.backends.hf import sequence_logprobs

    profile = parse_profile({"name": "Zed Toy", "task": "write notes", "demonstrations": [
        {"prompt": f"Greet {n}.", "output": f"Hi {n}.\n\nCheers,\nZed"} for n in ("Al", "Bo")]})
    config = {"sft_steps": 3, "sft_lr": 1e-2, "iterations": 1, "steps_per_iteration": 2, "samples_per_prompt": 2,
              "pairs_per_step": 4, "sample_max_new_tokens": 5, "batch_size": 2, "lr": 1e-2,
              "lora": {"r": 4, "dropout": 0.0}}
    run = tmp_path / "run"
    build_personalizer("ditto", tiny_backend, config).fit(profile, RunDir(run))
    row = next(r for r in RunDir(run).metrics if r.get("phase") == "ditto")
    # Iteration 0's first DPO step is taken at π_ref's weights: every implicit reward is 0, the loss is ln 2.
    assert row["first_step_loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert row["dpo_loss"] != pytest.approx(math.log(2), abs=1e-4)  # ... and the later step has moved
    extra = json.loads((run / "checkpoints" / "step-000002" / "state.json").read_text())["extra"]
    # A random model does not stop within 5 tokens: every sample is marked as cut at the limit.
    assert extra["ended"]["0"] == [[False, False], [False, False]] and row["truncated_samples"] == 1.0
    # The stored π_ref log-probs are the warm-start model's, of the samples without an end-of-turn token.
    load_trainable_state(tiny_backend.model, torch.load(run / "sft_warmstart" / "reference" / "weights.pt"))
    tok, pad = tiny_backend.tokenizer, tiny_backend.tokenizer.pad_token_id
    for p, (name, samples) in enumerate(zip(("Al", "Bo"), extra["history"]["0"], strict=True)):
        prompt = tiny_backend.prompt_ids([{"role": "user", "content": f"Greet {name}."}])
        for j, text in enumerate(samples):
            body = tok(text, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                expected = float(sequence_logprobs(tiny_backend.model, [(prompt, body)], pad, tiny_backend.device)[0])
                with_end = float(sequence_logprobs(tiny_backend.model, [(prompt, [*body, tok.eos_token_id])], pad,
                                                   tiny_backend.device)[0])
            assert extra["sample_ref"]["0"][p][j] == pytest.approx(expected, abs=1e-4)
            assert abs(with_end - expected) > 1e-3  # an end-of-turn would have changed what is stored


def test_paper_preset_is_a_valid_config_with_the_paper_settings():
    import yaml

    from conftest import REPO

    preset = yaml.safe_load((REPO / "configs" / "methods" / "smollm2-135m_ditto-paper_gpu.yaml").read_text())
    cfg = DittoConfig.model_validate(preset["method_config"])  # unknown or invalid fields fail here
    assert (cfg.lr, cfg.lora.r, cfg.lora.alpha, cfg.samples_per_prompt, cfg.sample_max_new_tokens) == (
        1e-6, 32, 64, 10, 1024)
    assert (cfg.sft_stop_loss, cfg.lr_schedule, cfg.warmup_ratio) == (1.0, "cosine", 0.2)
