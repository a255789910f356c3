"""Shared training pieces: the DPO loss by hand, the SFT label mask, LoRA setup, resumable batch order, the
learning-rate schedule and checkpoints through the engine."""

from __future__ import annotations

import math

import pytest
import torch

from personalign.engines.base import CrossEntropy, LoraSettings
from personalign.engines.local import LocalEngine, apply_lora, sft_batch, sft_loss
from personalign.errors import PersonalignError
from personalign.methods.training import TrainConfig, TrainingSession, batch_indices, datums, dpo_loss


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_dpo_loss_matches_hand_computation_and_gradient_signs():
    beta = 0.5
    pc = torch.tensor([-1.0, -2.0], requires_grad=True)
    pr = torch.tensor([-3.0, -1.0], requires_grad=True)
    rc = torch.tensor([-2.0, -2.0])
    rr = torch.tensor([-2.0, -2.0])
    loss, chosen_r, rejected_r = dpo_loss(pc, pr, rc, rr, beta)
    # pair 1: β[(−1+2) − (−3+2)] = 0.5·2 = 1;  pair 2: β[(−2+2) − (−1+2)] = −0.5
    expected = (math.log(1 + math.exp(-1.0)) + math.log(1 + math.exp(0.5))) / 2
    assert float(loss) == pytest.approx(expected, abs=1e-6)  # 0.64367
    assert chosen_r.tolist() == pytest.approx([0.5, 0.0])
    assert rejected_r.tolist() == pytest.approx([-0.5, 0.5])
    loss.backward()
    # ∂L/∂log π(y+) = −β σ(−margin) / N < 0 (raising the chosen lowers the loss); the rejected mirrors it.
    assert pc.grad.tolist() == pytest.approx([-beta * _sigmoid(-1.0) / 2, -beta * _sigmoid(0.5) / 2], abs=1e-6)
    assert (pc.grad < 0).all() and (pr.grad > 0).all()
    assert pr.grad.tolist() == pytest.approx((-pc.grad).tolist())


def test_sft_labels_mask_prompt_tokens(tiny_backend):
    conv = [{"role": "user", "content": "Say hi to Al."}]
    pairs = [tiny_backend.prompt_completion_ids(conv, "Hi Al. Cheers, Zed"),
             tiny_backend.prompt_completion_ids(conv, "Hi.")]
    pad = tiny_backend.tokenizer.pad_token_id
    batch = sft_batch(pairs, pad)
    for row, (prompt, completion) in enumerate(pairs):
        labels = batch["labels"][row].tolist()
        assert labels[: len(prompt)] == [-100] * len(prompt)  # every prompt token is masked
        assert labels[len(prompt) : len(prompt) + len(completion)] == completion  # every completion token counts
        assert set(labels[len(prompt) + len(completion) :]) <= {-100}  # padding is masked
        assert batch["attention_mask"][row].sum() == len(prompt) + len(completion)
    end_of_turn = tiny_backend.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert all(end_of_turn in completion for _, completion in pairs)  # the model learns to stop
    # The loss equals HF's own shifted cross-entropy with the same labels.
    model = tiny_backend.model
    ours = sft_loss(model, batch, tiny_backend.device)
    theirs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    assert float(ours) == pytest.approx(float(theirs), rel=1e-5)


def test_apply_lora_trains_only_adapter_and_rejects_unknown_modules(tiny_backend):
    with pytest.raises(PersonalignError, match="target_modules"):
        apply_lora(tiny_backend.model, LoraSettings(target_modules=["nope_proj"]))
    model = apply_lora(tiny_backend.model, LoraSettings(r=4))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert {n.split(".")[-4] for n in trainable} == {"q_proj", "k_proj", "v_proj", "o_proj"}


def test_batch_order_is_a_pure_function_of_seed_and_step():
    epoch = [i for step in range(3) for i in batch_indices(10, 4, step, seed=3)]
    assert sorted(epoch) == list(range(10))  # one epoch = every row once
    assert batch_indices(10, 4, 5, seed=3) == batch_indices(10, 4, 5, seed=3)
    assert [batch_indices(10, 4, s, seed=3) for s in range(3)] != [batch_indices(10, 4, s, seed=4) for s in range(3)]


def test_checkpoint_restores_weights_optimizer_and_step(tiny_backend, tmp_path):
    conv = [{"role": "user", "content": "Say hi to Al."}]
    data = datums([tiny_backend.prompt_completion_ids(conv, "Hi Al. Cheers, Zed")])
    engine = LocalEngine(tiny_backend, LoraSettings(r=4, dropout=0.0))
    config = TrainConfig(lr=0.1, warmup_steps=3)
    session = TrainingSession(engine, config, tmp_path)
    assert [session.lr_at(s) for s in range(4)] == pytest.approx([0.1 / 3, 0.2 / 3, 0.1, 0.1])
    for _ in range(2):
        session.update(data, CrossEntropy())
    session.save({"note": "two"})
    saved = {k: v.clone() for k, v in engine.model.state_dict().items() if "lora_" in k}
    exp_avg = [s["exp_avg"].clone() for s in engine.optimizer.state.values()]
    session.update(data, CrossEntropy())  # move on, then restore into a fresh session
    fresh = TrainingSession(engine, config, tmp_path)
    assert fresh.restore() == {"note": "two"}
    assert fresh.step == 2
    assert all(torch.equal(engine.model.state_dict()[k], v) for k, v in saved.items())
    assert all(torch.equal(a, s["exp_avg"]) for a, s in zip(exp_avg, engine.optimizer.state.values(), strict=True))
    assert fresh.lr_at(fresh.step) == pytest.approx(0.1)  # warmup step 3 of 3


def test_cosine_schedule_with_warmup_ratio_by_hand(tiny_backend):
    engine = LocalEngine(tiny_backend, LoraSettings(r=2))
    config = TrainConfig(lr=1.0, warmup_ratio=0.2, lr_schedule="cosine")
    session = TrainingSession(engine, config, None, total_steps=10)
    assert session.warmup == 2
    lrs = [session.lr_at(s) for s in range(10)]
    # warm-up 1/2, 2/2; then cosine over the 8 remaining steps: 0.5·(1 + cos(π·k/8)), k = 0..7
    assert lrs == pytest.approx([0.5, 1.0] + [0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(8)])
    assert TrainingSession(engine, TrainConfig(lr=1.0), None).lr_at(7) == 1.0  # the default stays constant
