"""Episode sampling shared by the context-based meta-learners (VPL, GPO).

An episode is one user: C labeled *context* pairs (what the model may condition on) and T disjoint
*target* pairs (what it is scored on). Users with fewer pairs get padded episodes plus a validity mask.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from pydantic import Field
from torch import nn

from personalign.config import Config
from personalign.prefbench.methods.base import PairSet, PrefMethod, tensor


class EpisodeOptions(Config):
    """Episode sizes shared by the meta-learners; each method overrides the defaults it needs."""

    steps: int = Field(500, ge=1, description="training steps (each a batch of user episodes)")
    episodes: int = Field(16, ge=1, description="user episodes per step")
    context_min: int = Field(4, ge=1)
    context_max: int = Field(64, ge=1, description="most context pairs per training episode")
    targets: int = Field(32, ge=1, description="target pairs per training episode")
    eval_context: int = Field(128, ge=1, description="most context pairs a user is evaluated with")
    lr: float | None = Field(None, gt=0, description="learning rate (None: the shared train.lr)")


@dataclass
class Episodes:
    """A batch of B episodes: context (B, C, d) ×2 + mask (B, C), targets (B, T, d) ×2 + mask (B, T)."""

    ctx_a: torch.Tensor
    ctx_b: torch.Tensor
    ctx_mask: torch.Tensor
    tar_a: torch.Tensor
    tar_b: torch.Tensor
    tar_mask: torch.Tensor


def user_rows(pairs: PairSet, n_users: int) -> list[np.ndarray]:
    return [np.flatnonzero(pairs.users == u) for u in range(n_users)]


def sample_episodes(pairs: PairSet, rows_by_user: list[np.ndarray], batch: int, c_min: int, c_max: int,
                    n_targets: int, rng: np.random.Generator) -> Episodes:
    """Random users (those with ≥ 2 pairs), each split into a context of size U[c_min, c_max] and targets."""
    eligible = [u for u, rows in enumerate(rows_by_user) if len(rows) >= 2]
    users = rng.choice(eligible, size=batch, replace=True)
    n_ctx = int(rng.integers(c_min, c_max + 1))
    d = pairs.dim
    ctx_a = np.zeros((batch, n_ctx, d), np.float32)
    ctx_b = np.zeros_like(ctx_a)
    ctx_mask = np.zeros((batch, n_ctx), bool)
    tar_a = np.zeros((batch, n_targets, d), np.float32)
    tar_b = np.zeros_like(tar_a)
    tar_mask = np.zeros((batch, n_targets), bool)
    for i, u in enumerate(users):
        rows = rows_by_user[u]
        # Keep at least one target; small users get shorter contexts.
        c = min(n_ctx, len(rows) - 1)
        t = min(n_targets, len(rows) - c)
        pick = rng.choice(rows, size=c + t, replace=False)
        ctx, tar = pick[:c], pick[c:]
        ctx_a[i, :c], ctx_b[i, :c], ctx_mask[i, :c] = pairs.a[ctx], pairs.b[ctx], True
        tar_a[i, :t], tar_b[i, :t], tar_mask[i, :t] = pairs.a[tar], pairs.b[tar], True
    t = torch.from_numpy
    return Episodes(t(ctx_a), t(ctx_b), t(ctx_mask), t(tar_a), t(tar_b), t(tar_mask))


def fixed_context(pairs: PairSet, limit: int, seed: int) -> PairSet:
    """At most `limit` of `pairs`, sampled with a fixed seed (the context a user is evaluated with)."""
    if len(pairs) <= limit:
        return pairs
    rng = np.random.default_rng(seed)
    return pairs.subset(np.sort(rng.choice(len(pairs), size=limit, replace=False)))


def train_on_episodes(method: PrefMethod, model: nn.Module, pairs: PairSet,
                      episode_loss: Callable[[Episodes], torch.Tensor]) -> list[float]:
    """AdamW over `method.options.steps` batches of random user episodes; returns the loss per step."""
    o, cfg = method.options, method.train_cfg
    opt = torch.optim.AdamW(model.parameters(), lr=o.lr or cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(method.seed)
    rows = user_rows(pairs, method.n_users)
    losses: list[float] = []
    for _ in range(o.steps):
        loss = episode_loss(sample_episodes(pairs, rows, o.episodes, o.context_min, o.context_max, o.targets, rng))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


def margins_by_user(pairs: PairSet, margin: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]) -> np.ndarray:
    """score(a) − score(b) of every pair, computed one user at a time by `margin(user, a, b)`."""
    out = np.zeros(len(pairs), dtype=np.float32)
    for u in np.unique(pairs.users):
        rows = np.flatnonzero(pairs.users == u)
        out[rows] = margin(int(u), tensor(pairs.a[rows]), tensor(pairs.b[rows])).numpy()
    return out
