"""Reward-model soups: experts fine-tuned from one shared initialization, merged by parameter averaging.

`soups` (Personalized Soups, Jang et al. 2023, `joeljang/RLPHF`): one expert per *preference dimension*
(P-SOUPS' preferences, e.g. "concise" / "elaborate"), each fine-tuned on comparisons labeled by that
dimension alone, then merged per user with the weights the user *declared* over the dimensions:
θ_u = Σ_d w_ud θ_d. No user labels are needed to serve a user; a new user brings its declared weights
(and, for a dimension no expert was trained for, e.g. DSP's held-out domain, its k pairs train one).

`rm-soup`: the same experts idea without known dimensions: one expert per training user, and each user's
mixing weights w_u (softmax of logits) *learned* from its own pairs. On the benchmark's data the learned
weights collapse onto the user's own expert, so it behaves much like `individual`.

Both start from a shared reward model trained on all pooled pairs (the common initialization that makes
parameter averaging meaningful: models fine-tuned from one point stay in one basin).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from pydantic import Field
from torch import nn
from torch.func import functional_call

from personalign.config import Config
from personalign.errors import PersonalignError
from personalign.prefbench.methods.base import (
    PairSet,
    PrefMethod,
    RewardMLP,
    TrainConfig,
    bt_loss,
    tensor,
    train_minibatch,
)


class SoupsOptions(Config):
    init_epochs: int = Field(5, ge=1, description="epochs of the shared initialization model")


class RMSoupOptions(SoupsOptions):
    weight_steps: int = Field(150, ge=1, description="Adam steps fitting each user's mixing weights")
    weight_lr: float = Field(0.05, gt=0, description="learning rate of the mixing-weight logits")


def merge(experts: dict[str, torch.Tensor], weights: torch.Tensor) -> dict[str, torch.Tensor]:
    """Parameter average: for each parameter name, Σ_v weights[v] · expert_v[name] (experts stacked on dim 0)."""
    return {name: torch.tensordot(weights, stacked, dims=1) for name, stacked in experts.items()}


def fine_tune(model: RewardMLP, pairs: PairSet, cfg: TrainConfig, seed: int) -> RewardMLP:
    a, b = tensor(pairs.a), tensor(pairs.b)
    train_minibatch(list(model.parameters()), lambda idx: bt_loss(model(a[idx]) - model(b[idx])), len(pairs), cfg,
                    seed)
    return model


def stack(models: list[RewardMLP]) -> dict[str, torch.Tensor]:
    """Each parameter stacked over models: name → (n_models, *shape)."""
    return {name: torch.stack([dict(m.named_parameters())[name].detach() for m in models])
            for name, _ in models[0].named_parameters()}


class _SoupBase(PrefMethod):
    def _shared_init(self, pairs: PairSet) -> None:
        self.template = RewardMLP(self.dim, self.train_cfg.hidden)
        fine_tune(self.template, pairs, self.train_cfg.model_copy(update={"epochs": self.options.init_epochs}),
                  self.seed)

    def _expert(self, pairs: PairSet, seed: int) -> RewardMLP:
        return fine_tune(copy.deepcopy(self.template), pairs, self.train_cfg, seed)

    def _merged_margins(self, pairs: PairSet, experts: dict[str, torch.Tensor], weights: torch.Tensor) -> np.ndarray:
        params = merge(experts, weights)
        return (functional_call(self.template, params, (tensor(pairs.a),))
                - functional_call(self.template, params, (tensor(pairs.b),))).numpy()


class Soups(_SoupBase):
    name = "soups"
    Options = SoupsOptions
    needs_dimensions = True

    def _fit(self, pairs: PairSet) -> None:
        dims = self.dimensions
        assert dims is not None  # fit() checked
        self._shared_init(pairs)
        self.experts: dict[str, RewardMLP] = {}
        for d, name in enumerate(dims.names):
            mine = dims.pairs.for_user(d)
            if len(mine):
                self.experts[name] = self._expert(mine.chosen_first(), self.seed + 1 + d)
        self.declared: dict[int, dict[str, float]] = {}
        for u in range(self.n_users):
            weights = {n: w for n, w in dims.declared(u).items() if n in self.experts}
            if not weights:
                raise PersonalignError(f"soups: user {u} declares no weight on a dimension with labeled pairs; "
                                       "give it declared weights or use rm-soup")
            self.declared[u] = weights

    def weights(self, user: int) -> dict[str, float]:
        """The user's declared weights over the experts, normalized to sum 1."""
        total = sum(self.declared[user].values())
        return {n: w / total for n, w in self.declared[user].items()}

    def _margins(self, pairs: PairSet) -> np.ndarray:
        out = np.zeros(len(pairs), dtype=np.float32)
        for u in np.unique(pairs.users):
            rows = np.flatnonzero(pairs.users == u)
            weights = self.weights(int(u))
            experts = stack([self.experts[n] for n in weights])
            out[rows] = self._merged_margins(pairs.subset(rows), experts, torch.tensor(list(weights.values())))
        return out

    def _add_user(self, uid: int, pairs: PairSet) -> None:
        declared = {n: w for n, w in (self.declared_new or {}).items() if w > 0}
        if not declared:
            raise PersonalignError("soups: a new user needs its declared weights over the preference dimensions "
                                   "(add_user(pairs, declared={dimension: weight}))")
        for name in declared:
            # A dimension nobody's labels trained (DSP: the held-out user's own domain) gets an expert from
            # the only labels there are for it, the new user's k pairs.
            if name not in self.experts:
                self.experts[name] = self._expert(pairs, self.seed + 7919 * uid)
        self.declared[uid] = declared


class RMSoup(_SoupBase):
    name = "rm-soup"
    Options = RMSoupOptions

    def _fit(self, pairs: PairSet) -> None:
        self._shared_init(pairs)
        self.experts = stack([self._expert(pairs.for_user(u), self.seed + 1 + u) for u in range(self.n_users)])
        self.n_experts = self.n_users
        self.logits: dict[int, torch.Tensor] = {u: self._fit_weights(pairs.for_user(u), u) for u in range(self.n_users)}

    def weights(self, user: int) -> np.ndarray:
        return torch.softmax(self.logits[user], dim=0).numpy()

    def _reward(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return functional_call(self.template, merge(self.experts, torch.softmax(logits, dim=0)), (x,))

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
            weights = torch.softmax(self.logits[int(u)], dim=0)
            out[rows] = self._merged_margins(pairs.subset(rows), self.experts, weights)
        return out

    def _add_user(self, uid: int, pairs: PairSet) -> None:
        self.logits[uid] = self._fit_weights(pairs, uid)
