"""The one interface every prefbench method implements, plus the shared Bradley-Terry pieces.

A method learns from labeled comparisons (`PairSet`: row i says user `users[i]` preferred `a[i]` over
`b[i]`), then returns a *margin* for any comparison and user: > 0 means "`a` is preferred", < 0 "`b`",
0 "no idea". New users join through `add_user(k labeled pairs)` (the few-shot adaptation protocol).

Heads are trained with plain torch: no library trains small reward heads on cached embeddings, and a
dozen lines of Adam keep every step visible and deterministic.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import Field
from torch import nn

from personalign.config import Config
from personalign.errors import PersonalignError


@dataclass
class PairSet:
    """Numeric view of comparisons: embeddings of both responses, the user, and optional text ids.

    `a_idx`/`b_idx` index a shared text table (`texts`): equal ids mean equal texts, which identifies the
    same comparison across users (majority vote) and gives text-based methods (LLM RAG, LoRA) their input.
    """

    a: np.ndarray
    b: np.ndarray
    users: np.ndarray
    a_idx: np.ndarray | None = None
    b_idx: np.ndarray | None = None
    prompt: np.ndarray | None = None
    texts: Sequence[str] | None = None

    def __post_init__(self) -> None:
        self.a = np.asarray(self.a, dtype=np.float32)
        self.b = np.asarray(self.b, dtype=np.float32)
        self.users = np.asarray(self.users, dtype=np.int64).reshape(-1)
        n = len(self.users)
        if self.a.ndim != 2 or self.a.shape != self.b.shape or self.a.shape[0] != n:
            raise PersonalignError(
                f"PairSet: a {self.a.shape}, b {self.b.shape} and users ({n},) must be (n, d), (n, d), (n,)"
            )
        for name in ("a_idx", "b_idx"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, np.asarray(value, dtype=np.int64).reshape(-1))
                if len(getattr(self, name)) != n:
                    raise PersonalignError(f"PairSet: {name} has {len(getattr(self, name))} rows, expected {n}")
        if self.prompt is not None:
            self.prompt = np.asarray(self.prompt, dtype=np.float32)

    def __len__(self) -> int:
        return len(self.users)

    @property
    def dim(self) -> int:
        return int(self.a.shape[1])

    def subset(self, idx: np.ndarray | Sequence[int]) -> PairSet:
        idx = np.asarray(idx, dtype=np.int64)
        pick = lambda x: None if x is None else x[idx]  # noqa: E731 - tiny local helper
        return PairSet(self.a[idx], self.b[idx], self.users[idx], pick(self.a_idx), pick(self.b_idx),
                       pick(self.prompt), self.texts)

    def for_user(self, user: int) -> PairSet:
        return self.subset(np.flatnonzero(self.users == user))

    def as_user(self, user: int) -> PairSet:
        """The same comparisons attributed to `user` (to score a shared set, e.g. a tax set, per user)."""
        return replace(self, users=np.full(len(self), user, dtype=np.int64))

    def flipped(self) -> PairSet:
        return PairSet(self.b, self.a, self.users, self.b_idx, self.a_idx, self.prompt, self.texts)

    @staticmethod
    def concat(sets: Sequence[PairSet]) -> PairSet:
        def cat(name: str) -> np.ndarray | None:
            parts = [getattr(s, name) for s in sets]
            return None if any(p is None for p in parts) else np.concatenate(parts)

        return PairSet(cat("a"), cat("b"), cat("users"), cat("a_idx"), cat("b_idx"), cat("prompt"), sets[0].texts)


class TrainConfig(Config):
    """Optimization of every small head (shared so methods differ only in what they model)."""

    hidden: int = Field(256, ge=1, description="hidden width of reward MLPs")
    epochs: int = Field(10, ge=1, description="passes over the training pairs (10 ≈ 20 on DSP, at half the time)")
    min_steps: int = Field(150, ge=1, description="at least this many updates (few-shot users have tiny sets)")
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)


def bt_loss(margin: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry negative log-likelihood of "first preferred": mean of −log σ(r_a − r_b)."""
    return nn.functional.softplus(-margin).mean()


def kl_standard_normal(mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(log_var)) ‖ N(0, I)) summed over latent dims, averaged over the batch."""
    return (0.5 * (mean.pow(2) + log_var.exp() - 1.0 - log_var).sum(dim=-1)).mean()


class RewardMLP(nn.Module):
    """Embedding (plus optional conditioning) → scalar reward: Linear → GELU → Linear."""

    def __init__(self, dim_in: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim_in, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


def n_steps(n: int, cfg: TrainConfig, epochs: int | None = None) -> int:
    return max(cfg.min_steps, (epochs or cfg.epochs) * math.ceil(n / cfg.batch_size))


def train_minibatch(
    params: Sequence[torch.Tensor] | Sequence[nn.Parameter],
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    n: int,
    cfg: TrainConfig,
    seed: int,
    steps: int | None = None,
    weight_decay: float | None = None,
) -> list[float]:
    """AdamW over shuffled minibatches of row indices 0..n-1; `loss_fn(idx)` returns the batch loss.

    Returns the loss of each step (tests check it falls)."""
    if n == 0:
        raise PersonalignError("cannot train on an empty set of pairs; check the user's training split")
    params = [p for p in params if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay if weight_decay is None else weight_decay)
    gen = torch.Generator().manual_seed(seed)
    total = steps if steps is not None else n_steps(n, cfg)
    bs = min(cfg.batch_size, n)
    losses: list[float] = []
    order = torch.randperm(n, generator=gen)
    pos = 0
    for _ in range(total):
        if pos + bs > n:
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos : pos + bs]
        pos += bs
        loss = loss_fn(idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def tensor(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x))


class PrefMethod(ABC):
    """Base of every method: `fit` on labeled pairs of users 0..n_users-1, `margins`, `add_user`."""

    name: ClassVar[str]
    Options: ClassVar[type[Config]] = Config
    #: True when the method's margins ignore the user (vanilla): the bench then scores shared sets once.
    user_agnostic: ClassVar[bool] = False

    def __init__(self, options: Config | dict[str, Any] | None = None, train: TrainConfig | None = None,
                 seed: int = 0):
        if options is None:
            options = self.Options()
        elif isinstance(options, dict):
            options = self.Options.model_validate(options)
        self.options = options
        self.train_cfg = train or TrainConfig()
        self.seed = seed
        self.n_users = 0
        self.dim = 0
        self._fitted = False

    # -- public API ---------------------------------------------------------------------------------
    def fit(self, pairs: PairSet, n_users: int) -> PrefMethod:
        """Learn from `pairs` of users 0..n_users-1 (each user needs at least one pair)."""
        if len(pairs) == 0:
            raise PersonalignError(f"{self.name}: empty training set; every method needs labeled pairs")
        self._check_users(pairs.users, n_users)
        missing = sorted(set(range(n_users)) - set(np.unique(pairs.users).tolist()))
        if missing:
            raise PersonalignError(f"{self.name}: users {missing} have no training pairs; drop them or add pairs")
        torch.manual_seed(self.seed)
        self.n_users, self.dim = n_users, pairs.dim
        self._fit(pairs)
        self._fitted = True
        return self

    def margins(self, pairs: PairSet) -> np.ndarray:
        """Per-row margin for "`a` preferred over `b`" by that row's user (> 0 yes, < 0 no, 0 unsure)."""
        if not self._fitted:
            raise PersonalignError(f"{self.name}: call fit() before margins()")
        if len(pairs) == 0:
            return np.zeros(0, dtype=np.float32)
        if pairs.dim != self.dim:
            raise PersonalignError(f"{self.name}: pairs have dim {pairs.dim}, the model was fit on dim {self.dim}")
        self._check_users(pairs.users, self.n_users)
        with torch.no_grad():
            return np.asarray(self._margins(pairs), dtype=np.float32)

    def add_user(self, pairs: PairSet) -> int:
        """Adapt to a new user from its labeled `pairs` (any user ids in them are ignored); returns its id."""
        if not self._fitted:
            raise PersonalignError(f"{self.name}: call fit() before add_user()")
        if len(pairs) == 0:
            raise PersonalignError(f"{self.name}: a new user needs at least one labeled pair")
        uid = self.n_users
        self.n_users += 1
        torch.manual_seed(self.seed + 7919 * uid)
        self._add_user(uid, pairs.as_user(uid))
        return uid

    def _check_users(self, users: np.ndarray, n_users: int) -> None:
        if len(users) and (users.min() < 0 or users.max() >= n_users):
            bad = sorted({int(u) for u in users if u < 0 or u >= n_users})[:5]
            raise PersonalignError(
                f"{self.name}: unknown user id(s) {bad}; this model knows users 0..{n_users - 1} "
                "(register new users with add_user)"
            )

    # -- for subclasses -------------------------------------------------------------------------------
    @abstractmethod
    def _fit(self, pairs: PairSet) -> None: ...

    @abstractmethod
    def _margins(self, pairs: PairSet) -> np.ndarray: ...

    @abstractmethod
    def _add_user(self, uid: int, pairs: PairSet) -> None: ...


def accuracy(margins: np.ndarray) -> float:
    """Share of rows whose first response wins; a zero margin (no decision) counts half."""
    if len(margins) == 0:
        return float("nan")
    return float(np.mean((margins > 0) + 0.5 * (margins == 0)))
