"""`gpo` (Group Preference Optimization, Zhao et al. 2024), as in the reference code
(`jamqd/Group-Preference-Optimization`, `models/tnp.py` + `models/gpo.py`) with Dong et al.'s sizes.

A transformer neural process over *responses*: a token is `[x, y]`, the response's embedding and its
preference y (context: 1 for the chosen response of a comparison, 0 for the rejected one; targets: 0, as the
reference feeds `[x_t, 0]`). Every token attends only to the (non-padded) context tokens (TNP's non-
autoregressive mask), so a target's prediction depends on the user's context alone. The head predicts a
mean and a std per target; each question's (comparison's) means go through a softmax over its options,
and the loss is the Gaussian negative log-likelihood of the observed preferences y under N(softmax mean,
std) — the reference's objective, with std = exp(raw) (`bound_std=False`) or 0.05 + 0.95·softplus(raw).

Sizes follow Dong et al.'s GPO config: d_model 128, embedder depth 4, feed-forward 128, 4 heads, 6 layers,
dropout 0. The margin of a comparison is the difference of its two pre-softmax means (the softmax
probability of `a` is σ of it). See `gpo-bt` for the Bradley-Terry variant.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field
from torch import nn

from personalign.prefbench.methods.base import PairSet, PrefMethod, tensor
from personalign.prefbench.methods.episodes import (
    EpisodeOptions,
    Episodes,
    fixed_context,
    margins_by_user,
    train_on_episodes,
)
from personalign.prefbench.methods.gpo_bt import gpo_attention_mask


class GPOOptions(EpisodeOptions):
    d_model: int = Field(128, ge=8, description="Dong et al.'s GPO config")
    emb_depth: int = Field(4, ge=2, description="layers of the token embedder MLP (reference build_mlp depth)")
    layers: int = Field(6, ge=1)
    heads: int = Field(4, ge=1)
    ff: int = Field(128, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    bound_std: bool = Field(False, description="std = 0.05 + 0.95·softplus (True) or exp (False, the reference)")
    standardize: bool = Field(True, description="z-score embedding dimensions on the training data first "
                                                "(sentence embeddings differ by tiny amounts otherwise)")
    episodes: int = Field(8, ge=1, description="user episodes per step")
    context_min: int = Field(10, ge=1, description="Dong et al.: 10–100 context questions")
    context_max: int = Field(64, ge=1, description="most context questions per training episode")
    targets: int = Field(32, ge=1, description="target questions per training episode")
    steps: int = Field(500, ge=1)
    lr: float | None = Field(1e-3, gt=0, description="AdamW learning rate (None: the shared train.lr); the "
                                                    "reference's 1e-4 needs far more steps than a CPU run has")
    eval_context: int = Field(100, ge=1, description="most context questions a user is evaluated with")
    eval_chunk: int = Field(512, ge=1, description="target responses per forward pass at evaluation")


def build_mlp(dim_in: int, dim_hid: int, dim_out: int, depth: int) -> nn.Sequential:
    """The reference's `build_mlp`: depth Linear layers with ReLU between."""
    layers: list[nn.Module] = [nn.Linear(dim_in, dim_hid), nn.ReLU()]
    for _ in range(depth - 2):
        layers += [nn.Linear(dim_hid, dim_hid), nn.ReLU()]
    layers.append(nn.Linear(dim_hid, dim_out))
    return nn.Sequential(*layers)


def question_softmax(mean_a: torch.Tensor, mean_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over each question's two options: (P(a), P(b))."""
    p = torch.softmax(torch.stack([mean_a, mean_b], dim=-1), dim=-1)
    return p[..., 0], p[..., 1]


def gaussian_nll(mean_a: torch.Tensor, mean_b: torch.Tensor, std_a: torch.Tensor, std_b: torch.Tensor,
                 y_a: torch.Tensor, y_b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """−mean over valid target tokens of log N(y; softmax mean, std), both options of every question."""
    p_a, p_b = question_softmax(mean_a, mean_b)
    ll_a = torch.distributions.Normal(p_a, std_a).log_prob(y_a)
    ll_b = torch.distributions.Normal(p_b, std_b).log_prob(y_b)
    return -torch.cat([ll_a[mask], ll_b[mask]]).mean()


class GPOModel(nn.Module):
    def __init__(self, dim: int, o: GPOOptions):
        super().__init__()
        self.embedder = build_mlp(dim + 1, o.d_model, o.d_model, o.emb_depth)
        layer = nn.TransformerEncoderLayer(o.d_model, o.heads, o.ff, dropout=o.dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, o.layers, enable_nested_tensor=False)
        self.predictor = nn.Sequential(nn.Linear(o.d_model, o.ff), nn.ReLU(), nn.Linear(o.ff, 2))
        self.bound_std = o.bound_std
        self.register_buffer("shift", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))

    def standardize_from(self, x: torch.Tensor) -> None:
        self.shift.copy_(x.mean(dim=0))
        self.scale.copy_(x.std(dim=0).clamp(min=1e-6))

    def forward(self, ctx_x: torch.Tensor, ctx_y: torch.Tensor, ctx_mask: torch.Tensor,
                tar_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Context responses (B, C, d) with preferences (B, C) and validity (B, C); targets (B, T, d) →
        per-target mean and std (B, T)."""
        n_ctx, n_tar = ctx_x.shape[1], tar_x.shape[1]
        x = (torch.cat([ctx_x, tar_x], dim=1) - self.shift) / self.scale
        y = torch.cat([ctx_y, torch.zeros(tar_x.shape[:2])], dim=1)
        h = self.embedder(torch.cat([x, y[..., None]], dim=-1))
        padding = torch.cat([~ctx_mask, torch.zeros(tar_x.shape[:2], dtype=torch.bool)], dim=1)
        out = self.predictor(self.encoder(h, mask=gpo_attention_mask(n_ctx, n_tar), src_key_padding_mask=padding))
        mean, raw_std = out[:, n_ctx:, 0], out[:, n_ctx:, 1]
        std = 0.05 + 0.95 * nn.functional.softplus(raw_std) if self.bound_std else torch.exp(raw_std)
        return mean, std


def context_of(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(B, C, d) chosen/rejected context pairs → responses (B, 2C, d), y (1 chosen, 0 rejected), mask."""
    ones = torch.ones(a.shape[:2])
    return torch.cat([a, b], dim=1), torch.cat([ones, 0 * ones], dim=1), torch.cat([mask, mask], dim=1)


class GPO(PrefMethod):
    name = "gpo"
    Options = GPOOptions

    def episode_loss(self, ep: Episodes) -> torch.Tensor:
        ctx_x, ctx_y, ctx_mask = context_of(ep.ctx_a, ep.ctx_b, ep.ctx_mask)
        n = ep.tar_a.shape[1]
        mean, std = self.model(ctx_x, ctx_y, ctx_mask, torch.cat([ep.tar_a, ep.tar_b], dim=1))
        ones = torch.ones_like(mean[:, :n])
        return gaussian_nll(mean[:, :n], mean[:, n:], std[:, :n], std[:, n:], ones, 0 * ones, ep.tar_mask)

    def _fit(self, pairs: PairSet) -> None:
        self.model = GPOModel(self.dim, self.options)
        if self.options.standardize:
            self.model.standardize_from(torch.cat([tensor(pairs.a), tensor(pairs.b)]))
        self.losses = train_on_episodes(self, self.model, pairs, self.episode_loss)
        self.contexts: dict[int, tuple[torch.Tensor, ...]] = {}
        for u in range(self.n_users):
            self._add_user(u, pairs.for_user(u))

    def _add_user(self, uid: int, pairs: PairSet) -> None:
        ctx = fixed_context(pairs, self.options.eval_context, self.seed + uid)
        self.contexts[uid] = context_of(tensor(ctx.a)[None], tensor(ctx.b)[None],
                                        torch.ones(1, len(ctx), dtype=torch.bool))

    def means(self, uid: int, x: torch.Tensor) -> torch.Tensor:
        """Pre-softmax means of responses `x` (n, d) for user `uid`, in chunks (targets are independent)."""
        ctx_x, ctx_y, mask = self.contexts[uid]
        chunk = self.options.eval_chunk
        return torch.cat([self.model(ctx_x, ctx_y, mask, x[s : s + chunk][None])[0][0]
                          for s in range(0, len(x), chunk)])

    def _margins(self, pairs: PairSet) -> np.ndarray:
        return margins_by_user(pairs, lambda u, a, b: self.means(u, a) - self.means(u, b))

