"""The tinker engine's pure parts, without a server: datum layout, the weight scaling that turns Tinker's weighted
sum into our mean, the per-token advantages of the built-in policy loss, and the one-line connection errors."""

from __future__ import annotations

import pytest
import torch

from personalign.engines.base import Datum, LoraSettings, policy_loss
from personalign.engines.local import sft_batch, sft_loss
from personalign.engines.tinker import (
    connect,
    lora_layers,
    mean_weights,
    policy_advantages,
    right_aligned,
    target_weights,
    tinker_datum,
    to_sampled,
)
from personalign.errors import PersonalignError


def test_datum_shifts_targets_and_zeroes_prompt_weights():
    d = tinker_datum([5, 6, 7], [8, 9], weights=[0.25, 0.75])
    assert d.model_input.to_ints() == [5, 6, 7, 8]
    assert d.loss_fn_inputs["target_tokens"].data == [6, 7, 8, 9]
    # The first completion token (8) is predicted at input position 2, the third target.
    assert d.loss_fn_inputs["weights"].data == [0.0, 0.0, 0.25, 0.75]
    with pytest.raises(PersonalignError, match="prompt token"):
        target_weights([], [1.0])
    with pytest.raises(PersonalignError, match="3 weights for 2"):
        tinker_datum([1], [2, 3], weights=[1.0, 1.0, 1.0])


def test_mean_weights_divide_by_the_batch_total():
    data = [Datum([1], [2, 3]), Datum([1], [4], weights=[2.0])]
    assert mean_weights(data) == [[0.25, 0.25], [0.5]]
    with pytest.raises(PersonalignError, match="sum to 0"):
        mean_weights([Datum([1], [2], weights=[0.0])])


def test_summed_cross_entropy_with_scaled_weights_equals_the_local_mean(tiny_backend):
    """Tinker's Σ w·nll over shifted targets, with our scaling, is exactly the local engine's weighted mean."""
    torch.manual_seed(0)
    data = [Datum([3, 4, 5], [6, 7, 8], weights=[1.0, 0.5, 2.0]), Datum([9, 10], [11], weights=[3.0])]
    model = tiny_backend.model
    batch = sft_batch([(d.prompt, d.completion) for d in data], pad_id=0)
    weights = torch.zeros(batch["input_ids"].shape)
    for row, d in enumerate(data):
        weights[row, len(d.prompt): len(d.prompt) + len(d.completion)] = torch.tensor(d.weights)
    total = 0.0
    with torch.no_grad():
        ours = float(sft_loss(model, batch, torch.device("cpu"), weights))
        for d, w in zip(data, mean_weights(data), strict=True):
            td = tinker_datum(d.prompt, d.completion, weights=w)
            logits = model(input_ids=torch.tensor([td.model_input.to_ints()])).logits[0].float()
            logp = torch.log_softmax(logits, -1).gather(-1, torch.tensor(td.loss_fn_inputs["target_tokens"].data)
                                                        .unsqueeze(-1)).squeeze(-1)
            total += float(-(logp * torch.tensor(td.loss_fn_inputs["weights"].data)).sum())
    assert total == pytest.approx(ours, rel=1e-5)


def test_per_token_advantages_make_the_summed_is_loss_our_sequence_mean():
    """Σ_i Σ_t −ρ_it·A_i/(n_i·N) equals policy_loss's per-sequence-then-batch mean, off policy (ρ ≠ 1)."""
    gen = torch.Generator().manual_seed(1)
    data = [Datum([1], [2, 3, 4], advantage=1.5), Datum([1], [5], advantage=-0.5)]
    logp = [torch.randn(3, generator=gen) - 2, torch.randn(1, generator=gen) - 2]
    sampled = [lp + 0.1 * torch.randn(lp.shape, generator=gen) for lp in logp]
    tinker_sum = sum(float(-(torch.exp(lp - s) * torch.tensor(a)).sum())
                     for lp, s, a in zip(logp, sampled, policy_advantages(data), strict=True))
    lp, s = right_aligned(logp), right_aligned(sampled)
    ours, _ = policy_loss(lp.values, lp.mask, torch.tensor([1.5, -0.5]), s.values)
    assert tinker_sum == pytest.approx(float(ours), rel=1e-6)


def test_right_aligned_keeps_gradients_and_layout():
    a = torch.tensor([-1.0, -2.0], requires_grad=True)
    b = torch.tensor([-3.0], requires_grad=True)
    lp = right_aligned([a, b])
    assert lp.values.tolist() == [[-1.0, -2.0], [0.0, -3.0]]
    assert lp.mask.tolist() == [[True, True], [False, True]]
    lp.sums().sum().backward()
    assert a.grad.tolist() == [1.0, 1.0] and b.grad.tolist() == [1.0]


def test_lora_layers_map_target_modules_and_refuse_what_tinker_lacks():
    assert lora_layers(LoraSettings()) == {"train_attn": True, "train_mlp": False, "train_unembed": False}
    assert lora_layers(LoraSettings(target_modules=["q_proj", "down_proj"]))["train_mlp"]
    with pytest.raises(PersonalignError, match="LoRA adapters only"):
        lora_layers(LoraSettings(enabled=False))
    with pytest.raises(PersonalignError, match="embed_tokens"):
        lora_layers(LoraSettings(target_modules=["embed_tokens"]))


def test_sampled_sequences_drop_the_end_of_turn_token_only_when_stopped():
    assert to_sampled([4, 5, 2], "stop", [2]).tokens == [4, 5]
    assert to_sampled([4, 5, 2], "length", [2]).tokens == [4, 5, 2]
    assert to_sampled([4, 5], "length", [2]).stop_reason == "length"


def test_connect_names_the_missing_key_and_the_unreachable_service(monkeypatch):
    from personalign.engines.tinker_server import free_port

    monkeypatch.delenv("TINKER_API_KEY", raising=False)
    with pytest.raises(PersonalignError, match="TINKER_API_KEY is not set"):
        connect("http://127.0.0.1:1")
    monkeypatch.setenv("TINKER_API_KEY", "sk-wrong")
    with pytest.raises(PersonalignError, match="starts with 'tml-'"):
        connect("http://127.0.0.1:1")
    monkeypatch.setenv("TINKER_API_KEY", "tml-local")
    with pytest.raises(PersonalignError, match="unreachable"):
        connect(f"http://127.0.0.1:{free_port()}", timeout_s=2)
