"""GPO as published (Gaussian likelihood on per-question softmax means, tokens [x, y]) and the `gpo-bt`
variant: masks, tokens, and the likelihood on a 2-question toy by hand."""

from __future__ import annotations

import math

import pytest
import torch

from personalign.prefbench.methods.gpo import GPOModel, GPOOptions, context_of, gaussian_nll, question_softmax
from personalign.prefbench.methods.gpo_bt import GPOBTModel, GPOBTOptions, context_tokens, gpo_attention_mask, tokens


def log_normal(y: float, mean: float, std: float) -> float:
    return -0.5 * ((y - mean) / std) ** 2 - math.log(std) - 0.5 * math.log(2 * math.pi)


def test_gaussian_likelihood_on_two_questions_by_hand() -> None:
    # Question 1: means (1, 0), std (1, 1), the user chose option a: y = (1, 0). softmax → (σ(1), 1 − σ(1)).
    # Question 2: means (0, 0), std (0.5, 2), the user chose option b: y = (0, 1). softmax → (½, ½).
    mean_a, mean_b = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 0.0]])
    std_a, std_b = torch.tensor([[1.0, 0.5]]), torch.tensor([[1.0, 2.0]])
    y_a, y_b = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    s = 1 / (1 + math.exp(-1))
    expected = -(log_normal(1, s, 1) + log_normal(0, 1 - s, 1) + log_normal(0, 0.5, 0.5) + log_normal(1, 0.5, 2)) / 4
    nll = gaussian_nll(mean_a, mean_b, std_a, std_b, y_a, y_b, torch.ones(1, 2, dtype=torch.bool))
    assert float(nll) == pytest.approx(expected, rel=1e-6)
    # A masked (padded) question does not count: only question 1 remains.
    only_first = gaussian_nll(mean_a, mean_b, std_a, std_b, y_a, y_b, torch.tensor([[True, False]]))
    assert float(only_first) == pytest.approx(-(log_normal(1, s, 1) + log_normal(0, 1 - s, 1)) / 2, rel=1e-6)
    pa, pb = question_softmax(mean_a, mean_b)
    assert torch.allclose(pa + pb, torch.ones(1, 2))


def test_context_is_x_with_y_one_for_chosen_zero_for_rejected() -> None:
    a, b = torch.ones(1, 2, 3), torch.zeros(1, 2, 3)
    x, y, mask = context_of(a, b, torch.tensor([[True, False]]))
    assert x.shape == (1, 4, 3) and y.tolist() == [[1.0, 1.0, 0.0, 0.0]]
    assert mask.tolist() == [[True, False, True, False]]


def gpo() -> GPOModel:
    torch.manual_seed(0)
    return GPOModel(3, GPOOptions(d_model=16, heads=2, ff=16, layers=2, emb_depth=3)).eval()


def test_published_gpo_targets_are_independent_and_context_labels_matter() -> None:
    m = gpo()
    ca, cb = torch.randn(1, 4, 3), torch.randn(1, 4, 3)
    x, y, mask = context_of(ca, cb, torch.ones(1, 4, dtype=torch.bool))
    t1, t2, t3 = (torch.randn(1, 1, 3) for _ in range(3))
    with torch.no_grad():
        with_t2 = m(x, y, mask, torch.cat([t1, t2], dim=1))[0]
        with_t3 = m(x, y, mask, torch.cat([t1, t3], dim=1))[0]
        swapped = m(*context_of(cb, ca, torch.ones(1, 4, dtype=torch.bool)), torch.cat([t1, t2], dim=1))[0]
    assert torch.allclose(with_t2[0, 0], with_t3[0, 0], atol=1e-5)
    assert not torch.allclose(with_t2, swapped, atol=1e-4)
    _, std = m(x, y, mask, t1)
    assert float(std.min()) > 0


def test_mask_by_hand() -> None:
    blocked = gpo_attention_mask(2, 2)
    expected = torch.tensor([[False, False, True, True]] * 4)
    assert torch.equal(blocked, expected)


def test_bt_variant_tokens_carry_the_preference_channel() -> None:
    a, b = torch.ones(1, 2, 3), torch.zeros(1, 2, 3)
    tok, mask = context_tokens(a, b, torch.tensor([[True, False]]))
    assert tok.shape == (1, 4, 7)
    assert torch.equal(tok[0, 2, 3:6], -b[0, 0]) and torch.equal(tok[0, 0, 3:6], a[0, 0])  # signed copy
    assert tok[0, :, -1].tolist() == [1.0, 1.0, -1.0, -1.0]
    assert mask.tolist() == [[True, False, True, False]]
    assert tokens(torch.zeros(5, 3), 0.0)[:, -1].abs().sum() == 0


def test_bt_variant_ignores_padding() -> None:
    torch.manual_seed(0)
    m = GPOBTModel(3, GPOBTOptions(d_model=16, heads=2, ff=16, layers=2, dropout=0.0)).eval()
    a, b = torch.randn(1, 4, 3), torch.randn(1, 4, 3)
    ctx, mask = context_tokens(a, b, torch.ones(1, 4, dtype=torch.bool))
    tar = tokens(torch.randn(1, 5, 3), 0.0)
    pa, pb = torch.cat([a, torch.randn(1, 2, 3)], 1), torch.cat([b, torch.randn(1, 2, 3)], 1)
    pctx, pmask = context_tokens(pa, pb, torch.tensor([[True] * 4 + [False] * 2]))
    with torch.no_grad():
        assert torch.allclose(m(ctx, mask, tar), m(pctx, pmask, tar), atol=1e-5)
