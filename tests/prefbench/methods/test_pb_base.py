"""Bradley-Terry pieces, PairSet checks and the shared training loop, on cases small enough by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from personalign.errors import PersonalignError
from personalign.prefbench.methods.base import (
    PairSet,
    RewardMLP,
    TrainConfig,
    accuracy,
    bt_loss,
    kl_standard_normal,
    n_steps,
    train_minibatch,
)


def test_bt_loss_value_by_hand() -> None:
    # −log σ(0) = ln 2; −log σ(ln 3) = −log(3/4).
    margin = torch.tensor([0.0, math.log(3.0)])
    assert float(bt_loss(margin)) == pytest.approx((math.log(2) - math.log(0.75)) / 2)


def test_bt_loss_of_a_linear_reward_by_hand() -> None:
    # r(x) = ⟨w, x⟩ with w = (1, 0): chosen (2, 0) vs rejected (0, 5) → margin 2; loss = log(1 + e^{-2}).
    w = torch.tensor([1.0, 0.0])
    margin = torch.tensor([[2.0, 0.0]]) @ w - torch.tensor([[0.0, 5.0]]) @ w
    assert float(bt_loss(margin)) == pytest.approx(math.log1p(math.exp(-2.0)))


def test_kl_term_by_hand() -> None:
    # KL(N((1, 0), diag(1, 2)) ‖ N(0, I)) = ½[(1 + 1 − 1 − 0) + (0 + 2 − 1 − ln 2)] = 1 − ½ ln 2.
    mean = torch.tensor([[1.0, 0.0]])
    log_var = torch.tensor([[0.0, math.log(2.0)]])
    assert float(kl_standard_normal(mean, log_var)) == pytest.approx(1 - 0.5 * math.log(2))
    assert float(kl_standard_normal(torch.zeros(3, 4), torch.zeros(3, 4))) == 0.0


def test_accuracy_counts_ties_half() -> None:
    assert accuracy(np.array([1.0, -1.0, 0.0, 2.0])) == pytest.approx(2.5 / 4)
    assert math.isnan(accuracy(np.array([])))


def test_pairset_checks_shapes_and_subsets() -> None:
    a = np.eye(3, dtype=np.float32)
    with pytest.raises(PersonalignError, match="must be"):
        PairSet(a, a[:2], [0, 0, 0])
    with pytest.raises(PersonalignError, match="a_idx has 2 rows"):
        PairSet(a, a, [0, 1, 1], a_idx=[0, 1])
    ps = PairSet(a, a[::-1], [0, 1, 1], a_idx=[0, 1, 2], b_idx=[2, 1, 0])
    assert len(ps.for_user(1)) == 2
    assert ps.flipped().a_idx.tolist() == [2, 1, 0]
    assert ps.as_user(4).users.tolist() == [4, 4, 4]
    both = PairSet.concat([ps, ps.for_user(0)])
    assert len(both) == 4 and both.b_idx.tolist() == [2, 1, 0, 2]


def test_training_loop_reduces_the_loss_and_rejects_empty_sets() -> None:
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(200, 4)).astype(np.float32))
    y = torch.from_numpy(rng.normal(size=(200, 4)).astype(np.float32))
    # Label: the response with the larger first coordinate wins.
    chosen = torch.where((x[:, 0] > y[:, 0])[:, None], x, y)
    rejected = torch.where((x[:, 0] > y[:, 0])[:, None], y, x)
    model = RewardMLP(4, 16)
    cfg = TrainConfig(epochs=5, min_steps=60, batch_size=50, lr=1e-2)
    losses = train_minibatch(list(model.parameters()), lambda i: bt_loss(model(chosen[i]) - model(rejected[i])),
                             200, cfg, seed=0)
    assert len(losses) == n_steps(200, cfg) == 60
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5])
    with pytest.raises(PersonalignError, match="empty set"):
        train_minibatch(list(model.parameters()), lambda i: torch.tensor(0.0), 0, cfg, seed=0)
