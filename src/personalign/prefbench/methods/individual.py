"""`individual`: one Bradley-Terry reward model per user, trained only on that user's pairs."""

from __future__ import annotations

import numpy as np

from personalign.config import Config
from personalign.prefbench.methods.base import PairSet, PrefMethod, RewardMLP, bt_loss, tensor, train_minibatch


class IndividualOptions(Config):
    """No options: the shared TrainConfig sets each per-user model's size and optimization."""


class Individual(PrefMethod):
    name = "individual"
    Options = IndividualOptions

    def _train_one(self, uid: int, pairs: PairSet) -> RewardMLP:
        model = RewardMLP(self.dim, self.train_cfg.hidden)
        a, b = tensor(pairs.a), tensor(pairs.b)
        train_minibatch(list(model.parameters()), lambda idx: bt_loss(model(a[idx]) - model(b[idx])),
                        len(pairs), self.train_cfg, self.seed + uid)
        return model

    def _fit(self, pairs: PairSet) -> None:
        self.models = {u: self._train_one(u, pairs.for_user(u)) for u in range(self.n_users)}

    def _margins(self, pairs: PairSet) -> np.ndarray:
        out = np.zeros(len(pairs), dtype=np.float32)
        for u in np.unique(pairs.users):
            rows = np.flatnonzero(pairs.users == u)
            model = self.models[int(u)]
            out[rows] = (model(tensor(pairs.a[rows])) - model(tensor(pairs.b[rows]))).numpy()
        return out

    def _add_user(self, uid: int, pairs: PairSet) -> None:
        self.models[uid] = self._train_one(uid, pairs)
