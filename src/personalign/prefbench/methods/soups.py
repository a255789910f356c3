"""`soups` (Personalized Soups, Jang et al. 2023): per-expert RMs merged by parameter averaging.

1. A shared reward model is trained on all pooled pairs (the common initialization model soups need).
2. One expert per training user (the benchmark's users play P-SOUPS' preference dimensions) is fine-tuned
   from that initialization on the user's pairs.
3. Each user gets mixing weights w_u on the simplex (softmax of learned logits); its reward model is the
   *parameter* average θ_u = Σ_v w_uv θ_v, and w_u is fitted on the user's own pairs. A new user only needs
   w fitted on its k pairs, which is P-SOUPS' post-hoc composition of preferences.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from pydantic import Field
from torch import nn
from torch.func import functional_call

from personalign.config import Config
from personalign.prefbench.methods.base import PairSet, PrefMethod, RewardMLP, bt_loss, tensor, train_minibatch


class SoupsOptions(Config):
    init_epochs: int = Field(5, ge=1, description="epochs of the shared initialization model")
    weight_steps: int = Field(150, ge=1, description="Adam steps fitting each user's mixing weights")
    weight_lr: float = Field(0.05, gt=0, description="learning rate of the mixing-weight logits")


def merge(experts: dict[str, torch.Tensor], weights: torch.Tensor) -> dict[str, torch.Tensor]:
    """Parameter average: for each parameter name, Σ_v weights[v] · expert_v[name] (experts stacked on dim 0)."""
    return {name: torch.tensordot(weights, stacked, dims=1) for name, stacked in experts.items()}


class Soups(PrefMethod):
    name = "soups"
    Options = SoupsOptions

    def _fit(self, pairs: PairSet) -> None:
        base = RewardMLP(self.dim, self.train_cfg.hidden)
        a, b = tensor(pairs.a), tensor(pairs.b)
        train_minibatch(list(base.parameters()), lambda idx: bt_loss(base(a[idx]) - base(b[idx])), len(pairs),
                        self.train_cfg.model_copy(update={"epochs": self.options.init_epochs}), self.seed)
        experts = []
        for u in range(self.n_users):
            model = copy.deepcopy(base)
            mine = pairs.for_user(u)
            ua, ub = tensor(mine.a), tensor(mine.b)
            train_minibatch(list(model.parameters()), lambda idx, m=model, x=ua, y=ub: bt_loss(m(x[idx]) - m(y[idx])),
                            len(mine), self.train_cfg, self.seed + 1 + u)
            experts.append(model)
        self.template = base
        # Stack each parameter over experts: name → (n_experts, *shape).
        self.experts = {
            name: torch.stack([dict(m.named_parameters())[name].detach() for m in experts])
            for name, _ in base.named_parameters()
        }
        self.n_experts = len(experts)
        self.logits: dict[int, torch.Tensor] = {}
        for u in range(self.n_users):
            self.logits[u] = self._fit_weights(pairs.for_user(u), u)

    def weights(self, user: int) -> np.ndarray:
        return torch.softmax(self.logits[user], dim=0).numpy()

    def _reward(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        params = merge(self.experts, torch.softmax(logits, dim=0))
        return functional_call(self.template, params, (x,))

    def _fit_weights(self, pairs: PairSet, uid: int) -> torch.Tensor:
        logits = nn.Parameter(torch.zeros(self.n_experts))
        a, b = tensor(pairs.a), tensor(pairs.b)
        cfg = self.train_cfg.model_copy(update={"lr": self.options.weight_lr})
        train_minibatch([logits], lambda idx: bt_loss(self._reward(a[idx], logits) - self._reward(b[idx], logits)),
                        len(pairs), cfg, self.seed + uid, steps=self.options.weight_steps, weight_decay=0.0)
        return logits.detach()

    def _margins(self, pairs: PairSet) -> np.ndarray:
        out = np.zeros(len(pairs), dtype=np.float32)
        for u in np.unique(pairs.users):
            rows = np.flatnonzero(pairs.users == u)
            logits = self.logits[int(u)]
            a, b = tensor(pairs.a[rows]), tensor(pairs.b[rows])
            out[rows] = (self._reward(a, logits) - self._reward(b, logits)).numpy()
        return out

    def _add_user(self, uid: int, pairs: PairSet) -> None:
        self.logits[uid] = self._fit_weights(pairs, uid)
