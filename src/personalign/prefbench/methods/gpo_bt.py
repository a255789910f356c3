"""`gpo-bt`: a Bradley-Terry variant of GPO (see `gpo` for the published method). A transformer reads a
user's labeled context and scores target responses in one forward pass (no gradient step to adapt).

Differences from the reference: tokens are `[x, y·x, y]` with y = ±1 (not `[x, y ∈ {0, 1}]`), and the
loss is the Bernoulli (Bradley-Terry) log-likelihood of the user's choices instead of a Gaussian
likelihood with a learned std; smaller transformer (d 64, 2 layers, pre-norm). Kept because it trains
faster and better on few users (BENCHMARKS.md reports both).

As in GPO, a token is one *response*: its embedding plus a preference channel y (+1: it was the chosen one
of its comparison, −1: the rejected one, 0: unknown = a target), plus a signed copy y·embedding (see
`tokens`). Masking as in GPO's transformer neural
process: every token attends only to (non-padded) *context* tokens, so targets never see each other and a
target's score does not depend on which other targets are in the batch. A comparison's two target scores go
through a softmax over its options (GPO's per-question softmax), i.e. P(a ≻ b) = σ(s_a − s_b), trained with
the log-likelihood of the user's choices over episodes of many users.
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


class GPOBTOptions(EpisodeOptions):
    d_model: int = Field(64, ge=8)
    layers: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)
    ff: int = Field(128, ge=1)
    episodes: int = Field(8, ge=1, description="user episodes per step")
    context_max: int = Field(32, ge=1, description="most context pairs per training episode")
    targets: int = Field(16, ge=1, description="target pairs per training episode")
    eval_context: int = Field(64, ge=1, description="most context pairs a user is evaluated with")
    eval_chunk: int = Field(512, ge=1, description="target responses per forward pass at evaluation")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="dropout in the transformer (small data overfits)")


def gpo_attention_mask(n_ctx: int, n_tar: int) -> torch.Tensor:
    """(L, L) boolean mask, True = blocked: every query may attend to the n_ctx context keys only."""
    mask = torch.ones(n_ctx + n_tar, n_ctx + n_tar, dtype=torch.bool)
    mask[:, :n_ctx] = False
    return mask


def tokens(x: torch.Tensor, y: float | torch.Tensor) -> torch.Tensor:
    """(…, d) response embeddings and a preference channel (scalar or (…)) → (…, 2d + 1) token features
    [x, y·x, y]. The signed copy y·x makes the mean over a user's context tokens (mean chosen − mean
    rejected) a linear function of the inputs: without it the network must first learn that product, which
    it did not manage on 4–8 users (training loss stayed at ln 2)."""
    y = torch.as_tensor(y, dtype=x.dtype).expand(x.shape[:-1])
    return torch.cat([x, y[..., None] * x, y[..., None]], dim=-1)


def context_tokens(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, d) chosen/rejected context pairs → (B, 2C, d+1) tokens (chosen +1, rejected −1) and mask."""
    return torch.cat([tokens(a, 1.0), tokens(b, -1.0)], dim=1), torch.cat([mask, mask], dim=1)


class GPOBTModel(nn.Module):
    def __init__(self, dim: int, o: GPOBTOptions):
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(2 * dim + 1, o.d_model), nn.ReLU(), nn.Linear(o.d_model, o.d_model))
        layer = nn.TransformerEncoderLayer(o.d_model, o.heads, o.ff, dropout=o.dropout, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, o.layers, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.Linear(o.d_model, o.ff), nn.ReLU(), nn.Linear(o.ff, 1))
        # Per-dimension standardization of the embeddings (set from the training data): sentence embeddings
        # of answers to similar prompts differ by tiny amounts, which a transformer trained from scratch
        # barely sees at their raw scale.
        self.register_buffer("shift", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))

    def standardize_from(self, x: torch.Tensor) -> None:
        self.shift.copy_(x.mean(dim=0))
        self.scale.copy_(x.std(dim=0).clamp(min=1e-6))

    def forward(self, ctx: torch.Tensor, ctx_mask: torch.Tensor, tar: torch.Tensor) -> torch.Tensor:
        """ctx (B, C, 2d+1) tokens with validity (B, C); tar (B, T, 2d+1) → target scores (B, T)."""
        n_ctx, n_tar = ctx.shape[1], tar.shape[1]
        x = torch.cat([ctx, tar], dim=1)
        d = self.shift.shape[0]
        emb = (x[..., :d] - self.shift) / self.scale
        # The signed copy is rebuilt from the standardized embedding so both halves share one scale.
        x = torch.cat([emb, x[..., -1:] * emb, x[..., -1:]], dim=-1)
        h = self.embed(x)
        padding = torch.cat([~ctx_mask, torch.zeros(tar.shape[:2], dtype=torch.bool)], dim=1)
        out = self.encoder(h, mask=gpo_attention_mask(n_ctx, n_tar), src_key_padding_mask=padding)
        return self.head(out[:, n_ctx:]).squeeze(-1)


class GPOBT(PrefMethod):
    name = "gpo-bt"
    Options = GPOBTOptions

    def _fit(self, pairs: PairSet) -> None:
        self.model = GPOBTModel(self.dim, self.options)
        self.model.standardize_from(torch.cat([tensor(pairs.a), tensor(pairs.b)]))

        def episode_loss(ep: Episodes) -> torch.Tensor:
            ctx, ctx_mask = context_tokens(ep.ctx_a, ep.ctx_b, ep.ctx_mask)
            n_tar = ep.tar_a.shape[1]
            scores = self.model(ctx, ctx_mask, torch.cat([tokens(ep.tar_a, 0.0), tokens(ep.tar_b, 0.0)], dim=1))
            return nn.functional.softplus(-(scores[:, :n_tar] - scores[:, n_tar:]))[ep.tar_mask].mean()

        self.losses = train_on_episodes(self, self.model, pairs, episode_loss)
        self.contexts: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for u in range(self.n_users):
            self._add_user(u, pairs.for_user(u))

    def _add_user(self, uid: int, pairs: PairSet) -> None:
        ctx = fixed_context(pairs, self.options.eval_context, self.seed + uid)
        self.contexts[uid] = context_tokens(tensor(ctx.a)[None], tensor(ctx.b)[None],
                                            torch.ones(1, len(ctx), dtype=torch.bool))

    def scores(self, uid: int, x: torch.Tensor) -> torch.Tensor:
        """Scores of responses `x` (n, d) for user `uid`, in chunks (targets are independent by the mask)."""
        ctx, mask = self.contexts[uid]
        chunk = self.options.eval_chunk
        parts = [self.model(ctx, mask, tokens(x[s : s + chunk], 0.0)[None])[0] for s in range(0, len(x), chunk)]
        return torch.cat(parts)

    def _margins(self, pairs: PairSet) -> np.ndarray:
        return margins_by_user(pairs, lambda u, a, b: self.scores(u, a) - self.scores(u, b))
