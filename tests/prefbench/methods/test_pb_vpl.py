"""VPL: the KL term enters the loss with its weight, and the context encoder ignores padding."""

from __future__ import annotations

import math

import pytest
import torch

from personalign.prefbench.methods.base import kl_standard_normal
from personalign.prefbench.methods.episodes import fixed_context
from personalign.prefbench.methods.vpl import VPL, VPLModel, VPLOptions, latent, stabilize


def test_kl_weight_scales_exactly_the_kl_term() -> None:
    torch.manual_seed(0)
    d = 3
    method = VPL(VPLOptions(latent_dim=2, kl_weight=0.0))
    method.model = VPLModel(d, 8, 2)
    ctx_a, ctx_b = torch.randn(1, 4, d), torch.randn(1, 4, d)
    tar_a, tar_b = torch.randn(1, 5, d), torch.randn(1, 5, d)
    ctx_mask, tar_mask = torch.ones(1, 4, dtype=torch.bool), torch.ones(1, 5, dtype=torch.bool)
    torch.manual_seed(1)
    loss0, kl0 = method.loss(ctx_a, ctx_b, ctx_mask, tar_a, tar_b, tar_mask)
    method.options = VPLOptions(latent_dim=2, kl_weight=2.0)
    torch.manual_seed(1)  # same z sample
    loss2, kl2 = method.loss(ctx_a, ctx_b, ctx_mask, tar_a, tar_b, tar_mask)
    mean, log_var = method.model.encode(ctx_a, ctx_b, ctx_mask)
    assert float(kl0.detach()) == pytest.approx(float(kl_standard_normal(mean, log_var).detach()))
    assert float((loss2 - loss0).detach()) == pytest.approx(2.0 * float(kl2.detach()), rel=1e-5)


def test_kl_is_zero_only_at_the_prior() -> None:
    assert float(kl_standard_normal(torch.zeros(1, 2), torch.zeros(1, 2))) == 0.0
    # Shrinking the variance to e^{-1} costs ½(e^{-1} − 1 + 1) per dim.
    value = float(kl_standard_normal(torch.zeros(1, 2), torch.full((1, 2), -1.0)))
    assert value == pytest.approx(2 * 0.5 * math.exp(-1.0))


def test_encoder_ignores_padded_context_pairs() -> None:
    torch.manual_seed(0)
    model = VPLModel(4, 8, 3)
    a, b = torch.randn(1, 3, 4), torch.randn(1, 3, 4)
    mean, log_var = model.encode(a, b, torch.ones(1, 3, dtype=torch.bool))
    pad_a = torch.cat([a, 100 * torch.randn(1, 2, 4)], dim=1)
    pad_b = torch.cat([b, 100 * torch.randn(1, 2, 4)], dim=1)
    mask = torch.tensor([[True, True, True, False, False]])
    mean_p, log_var_p = model.encode(pad_a, pad_b, mask)
    assert torch.allclose(mean, mean_p, atol=1e-6) and torch.allclose(log_var, log_var_p, atol=1e-6)


def test_reparameterization_by_hand() -> None:
    # z = normalize(mean + eps_scale · exp(½ log_var) · ε) · √d.
    # mean (0.6, 0.8), log_var (0, ln 4) → std (1, 2), ε (1, −1), scale 0.1: pre (0.7, 0.6) → unit · √2.
    mean, log_var = torch.tensor([[0.6, 0.8]]), torch.tensor([[0.0, math.log(4.0)]])
    z = latent(mean, log_var, torch.tensor([[1.0, -1.0]]), eps_scale=0.1)
    norm = math.hypot(0.7, 0.6)
    assert z[0].tolist() == pytest.approx([0.7 / norm * math.sqrt(2), 0.6 / norm * math.sqrt(2)], rel=1e-6)
    # Evaluation uses the posterior mean itself (no noise), normalized the same way: (0.6, 0.8) · √2.
    assert latent(mean)[0].tolist() == pytest.approx([0.6 * math.sqrt(2), 0.8 * math.sqrt(2)], rel=1e-6)


def test_posterior_is_clamped_and_evaluation_uses_its_mean(opposed, fast_train) -> None:
    mean, log_var = stabilize(torch.tensor([[-3.0, 0.5]]), torch.tensor([[5.0, -2.0]]))
    assert mean.tolist() == [[-1.0, 0.5]] and log_var.tolist() == [[1.0, -1.0]]
    train, test, _ = opposed
    method = VPL(VPLOptions(steps=5, latent_dim=4), fast_train).fit(train, 2)
    with torch.no_grad():
        ctx = fixed_context(train.for_user(0), method.options.eval_context, method.seed)  # the evaluated context
        m, _ = method.model.encode(torch.from_numpy(ctx.a)[None], torch.from_numpy(ctx.b)[None],
                                   torch.ones(1, len(ctx), dtype=torch.bool))
    assert torch.allclose(method.z[0], latent(m)[0], atol=1e-6)
    # Deterministic: scoring twice gives the same margins (no sampling at evaluation).
    assert (method.margins(test) == method.margins(test)).all()


def test_reference_preset_sizes() -> None:
    assert VPLOptions(preset="reference").sizes(256) == (512, 512, 2)
    assert VPLOptions(latent_dim=8, depth=3).sizes(64) == (8, 64, 3)
    model = VPLModel(5, 16, 4, depth=3)
    assert sum(isinstance(x, torch.nn.Linear) for x in model.decoder) == 4
