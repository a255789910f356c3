"""`vpl` (Variational Preference Learning, Poddar et al. 2024): a user latent z inferred from context pairs.

Encoder: each context pair (chosen, rejected) → pair embedding (MLP on the concatenation); self-attention
over the user's pairs, mean-pooled, gives the mean and log-variance of q(z | context). Decoder: reward
r(x, z) = MLP([emb(x), z]). Loss: Bradley-Terry on the episode's target pairs with z ~ q (reparameterized)
plus kl_weight · KL(q(z | context) ‖ N(0, I)). At evaluation z = the posterior mean from the user's context
(its training pairs, or the k pairs of a new user: adaptation needs no gradient step).

Stabilisers of the reference (`vpl_llm` `hidden_context/vae_utils.py`): the posterior mean and log-variance
are clamped to [−1, 1]; the sample is mean + eps_scale · std · ε (the reference scales ε by 1e-3), and z
is L2-normalized and scaled by √latent_dim, at training and at evaluation alike. `preset=reference` uses
the reference's sizes (latent 512, hidden 512, two hidden layers in the pair encoder and the decoder).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from personalign.prefbench.methods.base import PairSet, PrefMethod, kl_standard_normal, tensor
from personalign.prefbench.methods.episodes import EpisodeOptions, fixed_context, margins_by_user, train_on_episodes

# The reference's sizes (train_llm_vae_preference_model.py defaults; PairEncoder/Decoder have 2 hidden layers).
REFERENCE = {"latent_dim": 512, "hidden": 512, "depth": 2}


class VPLOptions(EpisodeOptions):
    preset: Literal["custom", "reference"] = Field("custom", description="reference = the vpl_llm sizes "
                                                                         "(overrides latent_dim, hidden, depth)")
    latent_dim: int = Field(32, ge=1)
    hidden: int | None = Field(None, ge=1, description="hidden width (None: the shared train.hidden)")
    depth: int = Field(1, ge=1, description="hidden layers of the pair encoder and of the decoder")
    kl_weight: float = Field(0.01, ge=0.0, description="β of the KL term (VPL's kl_loss_weight)")
    eps_scale: float = Field(1e-3, ge=0.0, description="scale of the reparameterization noise (reference 1e-3)")

    def sizes(self, default_hidden: int) -> tuple[int, int, int]:
        """(latent_dim, hidden, depth) after the preset."""
        if self.preset == "reference":
            return REFERENCE["latent_dim"], REFERENCE["hidden"], REFERENCE["depth"]
        return self.latent_dim, self.hidden or default_hidden, self.depth


def mlp(dim_in: int, hidden: int, dim_out: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(dim_in if i == 0 else hidden, hidden), nn.LeakyReLU(0.2)]
    return nn.Sequential(*layers, nn.Linear(hidden, dim_out))


def stabilize(mean: torch.Tensor, log_var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's clamps: posterior mean and log-variance to [−1, 1]."""
    return mean.clamp(-1.0, 1.0), log_var.clamp(-1.0, 1.0)


def latent(mean: torch.Tensor, log_var: torch.Tensor | None = None, eps: torch.Tensor | None = None,
           eps_scale: float = 1e-3) -> torch.Tensor:
    """z = normalize(mean + eps_scale · exp(½ log_var) · eps) · √d; without noise (evaluation), the posterior
    mean normalized the same way."""
    z = mean if log_var is None or eps is None else mean + eps_scale * torch.exp(0.5 * log_var) * eps
    return nn.functional.normalize(z, p=2, dim=-1) * z.shape[-1] ** 0.5


class VPLModel(nn.Module):
    def __init__(self, dim: int, hidden: int, latent_dim: int, depth: int = 1):
        super().__init__()
        self.pair_encoder = mlp(2 * dim, hidden, latent_dim, depth)
        self.w_q, self.w_k, self.w_v = (nn.Linear(latent_dim, latent_dim) for _ in range(3))
        self.mean_layer = nn.Linear(latent_dim, latent_dim)
        self.log_var_layer = nn.Linear(latent_dim, latent_dim)
        self.decoder = mlp(dim + latent_dim, hidden, 1, depth)

    def encode(self, ctx_a: torch.Tensor, ctx_b: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, d) chosen/rejected context + (B, C) validity → clamped posterior mean, log-variance (B, latent)."""
        h = self.pair_encoder(torch.cat([ctx_a, ctx_b], dim=-1))
        q, k, v = self.w_q(h), self.w_k(h), self.w_v(h)
        scores = q @ k.transpose(1, 2) / h.shape[-1] ** 0.5
        scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
        attended = torch.softmax(scores, dim=-1) @ v
        weights = mask.float() / mask.float().sum(dim=1, keepdim=True)
        pooled = (attended * weights[..., None]).sum(dim=1)
        return stabilize(self.mean_layer(pooled), self.log_var_layer(pooled))

    def reward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """x (B, T, d) with z (B, latent) → rewards (B, T)."""
        z = z[:, None, :].expand(-1, x.shape[1], -1)
        return self.decoder(torch.cat([x, z], dim=-1)).squeeze(-1)


class VPL(PrefMethod):
    name = "vpl"
    Options = VPLOptions

    def loss(self, ep_ctx_a: torch.Tensor, ep_ctx_b: torch.Tensor, ctx_mask: torch.Tensor, tar_a: torch.Tensor,
             tar_b: torch.Tensor, tar_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(total loss, KL term) of one batch of episodes."""
        mean, log_var = self.model.encode(ep_ctx_a, ep_ctx_b, ctx_mask)
        z = latent(mean, log_var, torch.randn_like(mean), self.options.eps_scale)
        margin = self.model.reward(tar_a, z) - self.model.reward(tar_b, z)
        recon = nn.functional.softplus(-margin)[tar_mask].mean()
        kl = kl_standard_normal(mean, log_var)
        return recon + self.options.kl_weight * kl, kl

    def _fit(self, pairs: PairSet) -> None:
        latent_dim, hidden, depth = self.options.sizes(self.train_cfg.hidden)
        self.model = VPLModel(self.dim, hidden, latent_dim, depth)
        self.losses = train_on_episodes(
            self, self.model, pairs,
            lambda ep: self.loss(ep.ctx_a, ep.ctx_b, ep.ctx_mask, ep.tar_a, ep.tar_b, ep.tar_mask)[0],
        )
        self.z: dict[int, torch.Tensor] = {}
        for u in range(self.n_users):
            self._add_context(u, pairs.for_user(u))

    def _add_context(self, uid: int, pairs: PairSet) -> None:
        ctx = fixed_context(pairs, self.options.eval_context, self.seed + uid)
        with torch.no_grad():
            mask = torch.ones(1, len(ctx), dtype=torch.bool)
            mean, _ = self.model.encode(tensor(ctx.a)[None], tensor(ctx.b)[None], mask)
        self.z[uid] = latent(mean)[0]  # the posterior mean, no sampling

    def _margins(self, pairs: PairSet) -> np.ndarray:
        def margin(u: int, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            z = self.z[u][None]
            return self.model.reward(a[None], z)[0] - self.model.reward(b[None], z)[0]

        return margins_by_user(pairs, margin)

    def _add_user(self, uid: int, pairs: PairSet) -> None:
        self._add_context(uid, pairs)
