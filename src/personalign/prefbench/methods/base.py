"""The one interface every prefbench method implements, plus the shared Bradley-Terry pieces.

A method learns from labeled comparisons (`PairSet`: row i says user `users[i]` preferred `a[i]` over
`b[i]` when `label[i]` = +1, `b[i]` over `a[i]` when −1), then returns a *margin* for any comparison and
user: > 0 means "`a` is preferred", < 0 "`b`", 0 "no idea". Methods train on chosen-first rows (`fit`
reorients); evaluation sets put the chosen response on a random side, so a method that learned "the first
slot wins" scores at chance. New users join through `add_user(k labeled pairs)` (few-shot adaptation).

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
    `prompt` holds the prompt's embedding (RAG retrieves by it), `prompt_idx` the prompt's text id, and
    `label` which side was preferred (+1 `a`, −1 `b`; None: every row is chosen-first).
    """

    a: np.ndarray
    b: np.ndarray
    users: np.ndarray
    a_idx: np.ndarray | None = None
    b_idx: np.ndarray | None = None
    prompt: np.ndarray | None = None
    texts: Sequence[str] | None = None
    label: np.ndarray | None = None
    prompt_idx: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.a = np.asarray(self.a, dtype=np.float32)
        self.b = np.asarray(self.b, dtype=np.float32)
        self.users = np.asarray(self.users, dtype=np.int64).reshape(-1)
        n = len(self.users)
        if self.a.ndim != 2 or self.a.shape != self.b.shape or self.a.shape[0] != n:
            raise PersonalignError(
                f"PairSet: a {self.a.shape}, b {self.b.shape} and users ({n},) must be (n, d), (n, d), (n,)"
            )
        for name in ("a_idx", "b_idx", "label", "prompt_idx"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, np.asarray(value, dtype=np.int64).reshape(-1))
                if len(getattr(self, name)) != n:
                    raise PersonalignError(f"PairSet: {name} has {len(getattr(self, name))} rows, expected {n}")
        if self.prompt is not None:
            self.prompt = np.asarray(self.prompt, dtype=np.float32)
        if self.label is not None and not np.isin(self.label, (-1, 1)).all():
            raise PersonalignError("PairSet: label must be +1 (a preferred) or −1 (b preferred)")

    def __len__(self) -> int:
        return len(self.users)

    @property
    def dim(self) -> int:
        return int(self.a.shape[1])

    def subset(self, idx: np.ndarray | Sequence[int]) -> PairSet:
        idx = np.asarray(idx, dtype=np.int64)
        pick = lambda x: None if x is None else x[idx]  # noqa: E731 - tiny local helper
        return PairSet(self.a[idx], self.b[idx], self.users[idx], pick(self.a_idx), pick(self.b_idx),
                       pick(self.prompt), self.texts, pick(self.label), pick(self.prompt_idx))

    def for_user(self, user: int) -> PairSet:
        return self.subset(np.flatnonzero(self.users == user))

    def as_user(self, user: int) -> PairSet:
        """The same comparisons attributed to `user` (to score a shared set, e.g. a tax set, per user)."""
        return replace(self, users=np.full(len(self), user, dtype=np.int64))

    @property
    def labels(self) -> np.ndarray:
        """+1 where `a` was preferred, −1 where `b` was."""
        return np.ones(len(self), dtype=np.int64) if self.label is None else self.label

    def flipped(self) -> PairSet:
        """Both responses swapped: the same judgements, so the label flips too."""
        return PairSet(self.b, self.a, self.users, self.b_idx, self.a_idx, self.prompt, self.texts, -self.labels,
                       self.prompt_idx)

    def chosen_first(self) -> PairSet:
        """Rows reoriented so `a` is the preferred response (what training losses expect)."""
        if self.label is None:
            return self
        swap = self.label < 0
        pick = lambda x, y: None if x is None else np.where(swap.reshape(-1, *[1] * (x.ndim - 1)), y, x)  # noqa: E731
        return PairSet(pick(self.a, self.b), pick(self.b, self.a), self.users, pick(self.a_idx, self.b_idx),
                       pick(self.b_idx, self.a_idx), self.prompt, self.texts, None, self.prompt_idx)

    def random_sides(self, seed: int) -> PairSet:
        """The same judgements with the preferred response on a seeded random side (for evaluation sets)."""
        base = self.chosen_first()
        swap = np.random.default_rng(seed).random(len(self)) < 0.5
        flipped = base.flipped()
        pick = lambda x, y: None if x is None else np.where(swap.reshape(-1, *[1] * (x.ndim - 1)), y, x)  # noqa: E731
        return PairSet(pick(base.a, flipped.a), pick(base.b, flipped.b), self.users, pick(base.a_idx, flipped.a_idx),
                       pick(base.b_idx, flipped.b_idx), self.prompt, self.texts, np.where(swap, -1, 1),
                       self.prompt_idx)

    @staticmethod
    def concat(sets: Sequence[PairSet]) -> PairSet:
        def cat(name: str) -> np.ndarray | None:
            parts = [getattr(s, name) for s in sets]
            return None if any(p is None for p in parts) else np.concatenate(parts)

        labels = None if all(s.label is None for s in sets) else np.concatenate([s.labels for s in sets])
        return PairSet(cat("a"), cat("b"), cat("users"), cat("a_idx"), cat("b_idx"), cat("prompt"), sets[0].texts,
                       labels, cat("prompt_idx"))


@dataclass
class Dimensions:
    """Known preference dimensions (P-SOUPS' "preferences"): labeled pairs per dimension (`pairs.users` =
    the dimension's index), each user's declared weights over them (rows on the simplex), and the training
    user a dimension's labels came from, if any (DSP: each domain is a user), so adaptation can drop
    dimensions learned from a held-out user."""

    names: list[str]
    pairs: PairSet
    weights: np.ndarray
    source_user: list[int | None]

    def declared(self, user: int) -> dict[str, float]:
        return {n: float(w) for n, w in zip(self.names, self.weights[user], strict=True) if w > 0}

    def for_users(self, keep: Sequence[int]) -> Dimensions:
        """Weights of `keep` (renumbered 0..), without dimensions whose labels came from other users."""
        keep = list(keep)
        dims = [d for d, src in enumerate(self.source_user) if src is None or src in keep]
        rows = np.flatnonzero(np.isin(self.pairs.users, dims))
        sub = self.pairs.subset(rows)
        sub.users = np.array([dims.index(int(u)) for u in sub.users], dtype=np.int64)
        mapping = {u: i for i, u in enumerate(keep)}
        return Dimensions([self.names[d] for d in dims], sub, self.weights[np.ix_(keep, dims)],
                          [None if self.source_user[d] is None else mapping[self.source_user[d]] for d in dims])

    def with_user(self, weights: np.ndarray) -> Dimensions:
        """One more user (e.g. the general-signal pseudo-user) with declared `weights`."""
        return Dimensions(self.names, self.pairs, np.vstack([self.weights, weights[None]]), self.source_user)


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
    #: True when fit() needs the data set's preference dimensions (soups).
    needs_dimensions: ClassVar[bool] = False
    #: True when scoring a pair is costly (an LLM forward pass): the bench scores a capped sample.
    slow: ClassVar[bool] = False

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
        self.dimensions: Dimensions | None = None
        self.declared_new: dict[str, float] | None = None  # the declared weights add_user was given

    # -- public API ---------------------------------------------------------------------------------
    def fit(self, pairs: PairSet, n_users: int, dimensions: Dimensions | None = None) -> PrefMethod:
        """Learn from `pairs` of users 0..n_users-1 (each user needs at least one pair). `dimensions`: the data
        set's known preference dimensions and each user's declared weights (only `soups` needs them)."""
        if len(pairs) == 0:
            raise PersonalignError(f"{self.name}: empty training set; every method needs labeled pairs")
        self._check_users(pairs.users, n_users)
        missing = sorted(set(range(n_users)) - set(np.unique(pairs.users).tolist()))
        if missing:
            raise PersonalignError(f"{self.name}: users {missing} have no training pairs; drop them or add pairs")
        if self.needs_dimensions and dimensions is None:
            raise PersonalignError(f"{self.name}: needs known preference dimensions and users' declared weights; "
                                   "this data set declares none (use rm-soup, which learns the weights)")
        torch.manual_seed(self.seed)
        self.n_users, self.dim = n_users, pairs.dim
        self.dimensions = dimensions
        self._fit(pairs.chosen_first())
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

    def add_user(self, pairs: PairSet, declared: dict[str, float] | None = None) -> int:
        """Adapt to a new user from its labeled `pairs` (any user ids in them are ignored) and, where the data
        set has preference dimensions, its declared weights over them; returns its id."""
        if not self._fitted:
            raise PersonalignError(f"{self.name}: call fit() before add_user()")
        if len(pairs) == 0:
            raise PersonalignError(f"{self.name}: a new user needs at least one labeled pair")
        uid = self.n_users
        self.n_users += 1
        torch.manual_seed(self.seed + 7919 * uid)
        self.declared_new = declared
        self._add_user(uid, pairs.as_user(uid).chosen_first())
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


def correct(margins: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
    """Per row: 1 if the margin picks the preferred side (`labels`: +1 = `a`, −1 = `b`; None = all `a`),
    0 if the other, ½ for a zero margin (no decision)."""
    signed = margins if labels is None else margins * labels
    return (signed > 0) + 0.5 * (signed == 0)


def accuracy(margins: np.ndarray, labels: np.ndarray | None = None) -> float:
    """Share of rows whose preferred response wins (see `correct`); NaN on no rows."""
    if len(margins) == 0:
        return float("nan")
    return float(np.mean(correct(margins, labels)))
