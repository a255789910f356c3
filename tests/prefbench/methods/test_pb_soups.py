"""Personalized soups: merging is a weighted parameter average; mixing weights pick the matching expert."""

from __future__ import annotations

import numpy as np
import torch
from torch.func import functional_call

from personalign.prefbench.methods.base import RewardMLP
from personalign.prefbench.methods.soups import Soups, SoupsOptions, merge


def test_merge_by_hand() -> None:
    experts = {"w": torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "b": torch.tensor([0.0, 8.0])}
    merged = merge(experts, torch.tensor([0.25, 0.75]))
    assert merged["w"].tolist() == [2.5, 3.5]
    assert float(merged["b"]) == 6.0


def test_merged_model_uses_averaged_parameters() -> None:
    torch.manual_seed(0)
    m1, m2 = RewardMLP(3, 4), RewardMLP(3, 4)
    stacked = {n: torch.stack([dict(m1.named_parameters())[n], dict(m2.named_parameters())[n]]).detach()
               for n, _ in m1.named_parameters()}
    x = torch.randn(5, 3)
    with torch.no_grad():
        out = functional_call(m1, merge(stacked, torch.tensor([1.0, 0.0])), (x,))
        assert torch.allclose(out, m1(x))
        half = functional_call(m1, merge(stacked, torch.tensor([0.5, 0.5])), (x,))
        manual = RewardMLP(3, 4)
        for (_, p), (_, p1), (_, p2) in zip(manual.named_parameters(), m1.named_parameters(), m2.named_parameters(),
                                            strict=True):
            p.copy_((p1 + p2) / 2)
        assert torch.allclose(half, manual(x), atol=1e-6)


def test_each_user_weights_its_own_expert_most(opposed, fast_train) -> None:
    train, _, _ = opposed
    method = Soups(SoupsOptions(init_epochs=2, weight_steps=80), fast_train).fit(train, 2)
    w0, w1 = method.weights(0), method.weights(1)
    assert np.isclose(w0.sum(), 1.0) and w0.argmax() == 0 and w1.argmax() == 1
