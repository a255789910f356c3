"""`vanilla`: one Bradley-Terry reward model for everyone (the non-personalized baseline).

`aggregate=concat` trains on every user's labels as they are (conflicting labels stay, as when data from
many annotators is pooled); `aggregate=majority` first replaces each comparison's labels by the majority
vote of its users (one vote per user; ties dropped), as a "consensus" RM would.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from personalign.config import Config
from personalign.errors import PersonalignError
from personalign.prefbench.methods.base import PairSet, PrefMethod, RewardMLP, bt_loss, tensor, train_minibatch


class VanillaOptions(Config):
    aggregate: Literal["concat", "majority"] = Field("concat", description="pool all labels, or majority-vote first")


def majority_pairs(pairs: PairSet) -> PairSet:
    """One row per comparison, oriented winner-first by the majority of its users; ties are dropped."""
    if pairs.a_idx is None or pairs.b_idx is None:
        raise PersonalignError("vanilla(aggregate=majority) needs text ids (a_idx, b_idx) to group comparisons")
    # votes[(lo, hi)][user] = sum of ±1 votes, +1 meaning text `lo` won.
    votes: dict[tuple[int, int], dict[int, int]] = defaultdict(lambda: defaultdict(int))
    first_row: dict[tuple[int, int], int] = {}
    for i, (a, b, u) in enumerate(zip(pairs.a_idx, pairs.b_idx, pairs.users, strict=True)):
        key = (min(a, b), max(a, b))
        votes[key][int(u)] += 1 if a < b else -1
        first_row.setdefault(key, i)
    rows, flip = [], []
    for key, by_user in votes.items():
        total = sum(np.sign(v) for v in by_user.values())
        if total == 0:
            continue
        i = first_row[key]
        row_lo_first = pairs.a_idx[i] < pairs.b_idx[i]
        rows.append(i)
        flip.append(bool(total > 0) != bool(row_lo_first))
    if not rows:
        raise PersonalignError("vanilla(aggregate=majority): every comparison is a tie; use aggregate=concat")
    sub = pairs.subset(rows)
    flip_arr = np.array(flip)
    a = np.where(flip_arr[:, None], sub.b, sub.a)
    b = np.where(flip_arr[:, None], sub.a, sub.b)
    a_idx = np.where(flip_arr, sub.b_idx, sub.a_idx)
    b_idx = np.where(flip_arr, sub.a_idx, sub.b_idx)
    return PairSet(a, b, np.zeros(len(rows), dtype=np.int64), a_idx, b_idx, sub.prompt, sub.texts)


class Vanilla(PrefMethod):
    name = "vanilla"
    Options = VanillaOptions
    user_agnostic = True

    def _fit(self, pairs: PairSet) -> None:
        data = majority_pairs(pairs) if self.options.aggregate == "majority" else pairs
        self.model = RewardMLP(self.dim, self.train_cfg.hidden)
        a, b = tensor(data.a), tensor(data.b)
        self.losses = train_minibatch(
            list(self.model.parameters()), lambda idx: bt_loss(self.model(a[idx]) - self.model(b[idx])),
            len(data), self.train_cfg, self.seed,
        )

    def reward(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.model(tensor(x)).numpy()

    def _margins(self, pairs: PairSet) -> np.ndarray:
        return self.reward(pairs.a) - self.reward(pairs.b)

    def _add_user(self, uid: int, pairs: PairSet) -> None:
        """One shared model: a new user gets the same predictions (vanilla does not adapt)."""
