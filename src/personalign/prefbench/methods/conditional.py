"""`conditional`: one reward model conditioned on the user: r(x, u) = MLP([emb(x), E_u]).

E is a learned user-embedding table (the embedding-space analogue of putting "USER: u" in the prompt). A new
user gets a fresh row, initialized at the mean of the known rows and fitted on its k pairs with the network
frozen, so adaptation changes only who the model thinks the user is.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field
from torch import nn

from personalign.config import Config
from personalign.prefbench.methods.base import PairSet, PrefMethod, RewardMLP, bt_loss, tensor, train_minibatch


class ConditionalOptions(Config):
    user_dim: int = Field(16, ge=1, description="size of the learned user embedding")
    adapt_lr: float = Field(1e-2, gt=0, description="learning rate of a new user's embedding (only it moves)")


class Conditional(PrefMethod):
    name = "conditional"
    Options = ConditionalOptions

    def _reward(self, x: torch.Tensor, users: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        return self.model(torch.cat([x, table[users]], dim=-1))

    def _fit(self, pairs: PairSet) -> None:
        d_u = self.options.user_dim
        self.model = RewardMLP(self.dim + d_u, self.train_cfg.hidden)
        self.table = nn.Parameter(0.1 * torch.randn(self.n_users, d_u))
        a, b, users = tensor(pairs.a), tensor(pairs.b), tensor(pairs.users)

        def loss(idx: torch.Tensor) -> torch.Tensor:
            u = users[idx]
            return bt_loss(self._reward(a[idx], u, self.table) - self._reward(b[idx], u, self.table))

        self.losses = train_minibatch([*self.model.parameters(), self.table], loss, len(pairs), self.train_cfg,
                                      self.seed)

    def _margins(self, pairs: PairSet) -> np.ndarray:
        users = tensor(pairs.users)
        table = self.table
        return (self._reward(tensor(pairs.a), users, table) - self._reward(tensor(pairs.b), users, table)).numpy()

    def _add_user(self, uid: int, pairs: PairSet) -> None:
        with torch.no_grad():
            start = self.table.detach().mean(dim=0, keepdim=True)
        row = nn.Parameter(start.clone())
        a, b = tensor(pairs.a), tensor(pairs.b)
        frozen = self.table.detach()
        for p in self.model.parameters():
            p.requires_grad_(False)

        def loss(idx: torch.Tensor) -> torch.Tensor:
            table = torch.cat([frozen, row])
            u = torch.full((len(idx),), uid, dtype=torch.long)
            return bt_loss(self._reward(a[idx], u, table) - self._reward(b[idx], u, table))

        # Weight decay pulls the new row toward zero, not toward the population; none here.
        cfg = self.train_cfg.model_copy(update={"lr": self.options.adapt_lr})
        train_minibatch([row], loss, len(pairs), cfg, self.seed + uid, weight_decay=0.0)
        for p in self.model.parameters():
            p.requires_grad_(True)
        self.table = nn.Parameter(torch.cat([frozen, row.detach()]))
