"""Soups: merging is a weighted parameter average; `soups` merges dimension experts with the declared
weights, `rm-soup`'s learned mixing weights pick the matching expert."""

from __future__ import annotations

import numpy as np
import torch
from torch.func import functional_call

from personalign.prefbench.methods.base import Dimensions, RewardMLP
from personalign.prefbench.methods.soups import RMSoup, RMSoupOptions, Soups, SoupsOptions, merge, stack


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


def test_rm_soup_user_weights_its_own_expert_most(opposed, fast_train) -> None:
    train, _, _ = opposed
    method = RMSoup(RMSoupOptions(init_epochs=2, weight_steps=80), fast_train).fit(train, 2)
    w0, w1 = method.weights(0), method.weights(1)
    assert np.isclose(w0.sum(), 1.0) and w0.argmax() == 0 and w1.argmax() == 1


def test_soups_merge_dimension_experts_with_the_declared_weights(opposed, fast_train) -> None:
    train, test, _ = opposed
    # Two dimensions learned from the two users' labels; user 0 declares 3 parts 'up' to 1 part 'down'.
    dims = Dimensions(["up", "down"], train, np.array([[3.0, 1.0], [0.0, 1.0]]), [None, None])
    method = Soups(SoupsOptions(init_epochs=2), fast_train).fit(train, 2, dims)
    assert method.weights(0) == {"up": 0.75, "down": 0.25} and method.weights(1) == {"down": 1.0}
    params = merge(stack([method.experts["up"], method.experts["down"]]), torch.tensor([0.75, 0.25]))
    q = test.for_user(0)
    with torch.no_grad():
        expected = (functional_call(method.template, params, (torch.from_numpy(q.a),))
                    - functional_call(method.template, params, (torch.from_numpy(q.b),))).numpy()
    np.testing.assert_allclose(method.margins(q), expected, atol=1e-6)


def test_soups_new_user_declares_weights_and_a_dimension_without_expert_learns_from_its_pairs(opposed,
                                                                                             fast_train) -> None:
    train, test, _ = opposed
    # DSP-like: each dimension is a user's own labels; user 1 is held out, so 'down' has no labels.
    seen = Dimensions(["up", "down"], train, np.eye(2), [0, 1]).for_users([0])
    assert seen.names == ["up"]
    method = Soups(SoupsOptions(init_epochs=2), fast_train).fit(train.for_user(0), 1, seen)
    uid = method.add_user(train.for_user(1).subset(np.arange(60)), {"down": 1.0})
    assert set(method.experts) == {"up", "down"}
    target = test.for_user(1).as_user(uid)
    assert np.mean(method.margins(target) > 0) > 0.75
