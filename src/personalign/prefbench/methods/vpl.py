"""`vpl` (Variational Preference Learning, Poddar et al. 2024): a user latent z inferred from context pairs.

Encoder: each context pair (chosen, rejected) → pair embedding (MLP on the concatenation); self-attention
over the user's pairs, mean-pooled, gives the mean and log-variance of q(z | context). Decoder: reward
r(x, z) = MLP([emb(x), z]). Loss: Bradley-Terry on the episode's target pairs with z ~ q (reparameterized)
plus kl_weight · KL(q(z | context) ‖ N(0, I)). At evaluation z = the posterior mean from the user's context
(its training pairs, or the k pairs of a new user: adaptation needs no gradient step).
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field
from torch import nn

from personalign.prefbench.methods.base import PairSet, PrefMethod, kl_standard_normal, tensor
from personalign.prefbench.methods.episodes import EpisodeOptions, fixed_context, margins_by_user, train_on_episodes


class VPLOptions(EpisodeOptions):
    latent_dim: int = Field(32, ge=1)
    kl_weight: float = Field(0.01, ge=0.0, description="β of the KL term (VPL's kl_loss_weight)")


class VPLModel(nn.Module):
    def __init__(self, dim: int, hidden: int, latent: int):
        super().__init__()
        self.pair_encoder = nn.Sequential(
            nn.Linear(2 * dim, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, latent)
        )
        self.w_q, self.w_k, self.w_v = (nn.Linear(latent, latent) for _ in range(3))
        self.mean_layer = nn.Linear(latent, latent)
        self.log_var_layer = nn.Linear(latent, latent)
        self.decoder = nn.Sequential(nn.Linear(dim + latent, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 1))

    def encode(self, ctx_a: torch.Tensor, ctx_b: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, d) chosen/rejected context + (B, C) validity → posterior mean and log-variance (B, latent)."""
        h = self.pair_encoder(torch.cat([ctx_a, ctx_b], dim=-1))
        q, k, v = self.w_q(h), self.w_k(h), self.w_v(h)
        scores = q @ k.transpose(1, 2) / h.shape[-1] ** 0.5
        scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
        attended = torch.softmax(scores, dim=-1) @ v
        weights = mask.float() / mask.float().sum(dim=1, keepdim=True)
        pooled = (attended * weights[..., None]).sum(dim=1)
        return self.mean_layer(pooled), self.log_var_layer(pooled)

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
        z = mean + torch.exp(0.5 * log_var) * torch.randn_like(mean)
        margin = self.model.reward(tar_a, z) - self.model.reward(tar_b, z)
        recon = nn.functional.softplus(-margin)[tar_mask].mean()
        kl = kl_standard_normal(mean, log_var)
        return recon + self.options.kl_weight * kl, kl

    def _fit(self, pairs: PairSet) -> None:
        self.model = VPLModel(self.dim, self.train_cfg.hidden, self.options.latent_dim)
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
        self.z[uid] = mean[0]

    def _margins(self, pairs: PairSet) -> np.ndarray:
        def margin(u: int, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            z = self.z[u][None]
            return self.model.reward(a[None], z)[0] - self.model.reward(b[None], z)[0]

        return margins_by_user(pairs, margin)

    def _add_user(self, uid: int, pairs: PairSet) -> None:
        self._add_context(uid, pairs)
