"""P-RM: the α mixing of the user-specific and generic Bradley-Terry losses, by hand."""

from __future__ import annotations

import math

import pytest
import torch

from personalign.prefbench.methods.personalized import PRM, Personalized, PersonalizedOptions


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


@pytest.mark.parametrize("alpha", [0.0, 0.25, 1.0])
def test_alpha_mixes_user_and_generic_losses_by_hand(alpha: float) -> None:
    # Trunk = GELU(I·x): a = (1, 0) → h_a = (g, 0), b = (0, 1) → h_b = (0, g), g = gelu(1) = Φ(1).
    # Generic head v = (1, 0), user 0's offset p = (0, 2):
    #   user margin ⟨v + p, h_a − h_b⟩ = (1, 2)·(g, −g) = −g;  generic margin ⟨v, h_a − h_b⟩ = g.
    # loss = α·softplus(g) + (1 − α)·softplus(−g) + l2·‖p‖² (BT loss = softplus(−margin)).
    g = 0.5 * (1 + math.erf(1 / math.sqrt(2)))
    method = Personalized(PersonalizedOptions(alpha=alpha, offset_l2=0.1))
    method.model = PRM(2, 2, 1)
    with torch.no_grad():
        method.model.trunk[0].weight.copy_(torch.eye(2))
        method.model.trunk[0].bias.zero_()
        method.model.generic.copy_(torch.tensor([1.0, 0.0]))
        method.model.offsets.copy_(torch.tensor([[0.0, 2.0]]))
    loss = method.loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([0]))
    expected = alpha * softplus(g) + (1 - alpha) * softplus(-g) + 0.1 * 4.0
    assert float(loss) == pytest.approx(expected, rel=1e-5)
