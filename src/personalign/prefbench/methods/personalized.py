"""`personalized` (P-RM, Li et al. 2024): shared + user-specific components, trained on both objectives.

r(x, u) = ⟨v + p_u, h(x)⟩ and the generic r₀(x) = ⟨v, h(x)⟩, with a shared trunk h, a shared (generic)
head v and a user-specific offset p_u. The loss is α·BT(r(·, u)) + (1 − α)·BT(r₀), i.e. every pair is also
used as if labeled by the generic "user 0" — the duplication trick of the P-RLHF code. A new user gets a new
offset fitted on its k pairs with everything shared frozen.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field
from torch import nn

from personalign.config import Config
from personalign.prefbench.methods.base import PairSet, PrefMethod, bt_loss, tensor, train_minibatch


class PersonalizedOptions(Config):
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="weight of the user-specific loss (1 − α: generic)")
    offset_l2: float = Field(1e-3, ge=0.0, description="L2 penalty on user offsets p_u (keeps them small)")
    adapt_lr: float = Field(1e-2, gt=0, description="learning rate of a new user's offset (only it moves)")


class PRM(nn.Module):
    def __init__(self, dim: int, hidden: int, n_users: int):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(dim, hidden), nn.GELU())
        self.generic = nn.Parameter(torch.randn(hidden) / hidden**0.5)
        self.offsets = nn.Parameter(torch.zeros(n_users, hidden))

    def forward(self, x: torch.Tensor, users: torch.Tensor | None, offsets: torch.Tensor | None = None) -> torch.Tensor:
        h = self.trunk(x)
        if users is None:
            return h @ self.generic
        table = self.offsets if offsets is None else offsets
        return (h * (self.generic + table[users])).sum(-1)


class Personalized(PrefMethod):
    name = "personalized"
    Options = PersonalizedOptions

    def loss(self, a: torch.Tensor, b: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        """α·BT(user margins) + (1 − α)·BT(generic margins) + offset_l2·mean ‖p_u‖² of chosen-first rows."""
        alpha, l2 = self.options.alpha, self.options.offset_l2
        user_loss = bt_loss(self.model(a, users) - self.model(b, users))
        generic_loss = bt_loss(self.model(a, None) - self.model(b, None))
        return alpha * user_loss + (1 - alpha) * generic_loss + l2 * self.model.offsets[users].pow(2).sum(-1).mean()

    def _fit(self, pairs: PairSet) -> None:
        self.model = PRM(self.dim, self.train_cfg.hidden, self.n_users)
        a, b, users = tensor(pairs.a), tensor(pairs.b), tensor(pairs.users)
        self.losses = train_minibatch(list(self.model.parameters()), lambda idx: self.loss(a[idx], b[idx], users[idx]),
                                      len(pairs), self.train_cfg, self.seed)

    def _margins(self, pairs: PairSet) -> np.ndarray:
        u = tensor(pairs.users)
        return (self.model(tensor(pairs.a), u) - self.model(tensor(pairs.b), u)).numpy()

    def generic_margins(self, pairs: PairSet) -> np.ndarray:
        with torch.no_grad():
            return (self.model(tensor(pairs.a), None) - self.model(tensor(pairs.b), None)).numpy()

    def _add_user(self, uid: int, pairs: PairSet) -> None:
        frozen = self.model.offsets.detach()
        row = nn.Parameter(torch.zeros(1, frozen.shape[1]))
        a, b = tensor(pairs.a), tensor(pairs.b)
        for p in self.model.parameters():
            p.requires_grad_(False)
        l2 = self.options.offset_l2

        def loss(idx: torch.Tensor) -> torch.Tensor:
            table = torch.cat([frozen, row])
            u = torch.full((len(idx),), uid, dtype=torch.long)
            margin = self.model(a[idx], u, table) - self.model(b[idx], u, table)
            return bt_loss(margin) + l2 * row.pow(2).sum()

        cfg = self.train_cfg.model_copy(update={"lr": self.options.adapt_lr})
        train_minibatch([row], loss, len(pairs), cfg, self.seed + uid, weight_decay=0.0)
        for p in self.model.parameters():
            p.requires_grad_(True)
        self.model.offsets = nn.Parameter(torch.cat([frozen, row.detach()]))
