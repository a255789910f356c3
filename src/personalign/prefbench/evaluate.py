"""The three judgements of a method: per-user accuracy (and fairness), personalization tax, adaptation.

- accuracy: on each user's test pairs; mean over users, worst user, std, and the mean over minority users.
- tax: accuracy on general-purpose comparisons (tax sets) by category, scored as each training user and
  averaged over users (a personalized RM is used by its user).
- adaptation: users are split into folds; each fold's users are held out, the method is trained on the
  others, then given k labeled pairs of each held-out user and scored on that user's test pairs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from personalign.prefbench.methods.base import PairSet, PrefMethod, accuracy


def per_user_accuracy(method: PrefMethod, test: PairSet, users: Sequence[str]) -> dict[str, float]:
    margins = method.margins(test)
    return {name: accuracy(margins[test.users == u]) for u, name in enumerate(users)}


def summarize(per_user: dict[str, float], minority_users: Sequence[str]) -> dict[str, Any]:
    values = np.array(list(per_user.values()), dtype=float)
    minority = [per_user[u] for u in minority_users if u in per_user]
    worst = min(per_user, key=per_user.__getitem__)
    return {
        "mean_acc": float(values.mean()),
        "worst_acc": float(values.min()),
        "worst_user": worst,
        "std_acc": float(values.std()),
        "minority_acc": float(np.mean(minority)) if minority else None,
    }


def tax_accuracy(method: PrefMethod, tax: PairSet, categories: np.ndarray, n_users: int) -> dict[str, float]:
    """Per category: accuracy averaged over the scored users (once if the method ignores users)."""
    users = [0] if method.user_agnostic else list(range(n_users))
    margins = np.stack([method.margins(tax.as_user(u)) for u in users])
    return {
        str(cat): float(np.mean([accuracy(m[categories == cat]) for m in margins]))
        for cat in dict.fromkeys(categories.tolist())
    }


def margin_tax(margins: np.ndarray, categories: np.ndarray) -> dict[str, float]:
    return {str(cat): accuracy(margins[categories == cat]) for cat in dict.fromkeys(categories.tolist())}


def user_folds(n_users: int, n_folds: int, seed: int) -> list[list[int]]:
    """Users shuffled with `seed` and dealt into min(n_folds, n_users) non-empty folds."""
    order = np.random.default_rng(seed).permutation(n_users)
    n_folds = min(n_folds, n_users)
    return [sorted(int(u) for u in order[f::n_folds]) for f in range(n_folds)]


def remap_users(pairs: PairSet, keep: Sequence[int]) -> PairSet:
    """Rows of the users in `keep`, with user ids renumbered 0..len(keep)-1 in `keep` order."""
    mapping = {u: i for i, u in enumerate(keep)}
    sub = pairs.subset(np.flatnonzero(np.isin(pairs.users, list(keep))))
    sub.users = np.array([mapping[int(u)] for u in sub.users], dtype=np.int64)
    return sub


def adaptation_curve(
    make: Callable[[], PrefMethod],
    train: PairSet,
    test: PairSet,
    n_users: int,
    ks: Sequence[int],
    n_folds: int,
    seed: int,
    on_fold: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Mean accuracy of held-out users after k labeled pairs, for each k; plus per-fold detail."""
    folds = user_folds(n_users, n_folds, seed)
    scores: dict[int, list[float]] = {k: [] for k in ks}
    detail = []
    for f, held in enumerate(folds):
        seen = [u for u in range(n_users) if u not in held]
        method = make().fit(remap_users(train, seen), len(seen))
        for h in held:
            mine, target = train.for_user(h), test.for_user(h)
            rng = np.random.default_rng(seed * 1009 + h)
            order = rng.permutation(len(mine))
            for k in ks:
                shots = mine.subset(np.sort(order[: min(k, len(mine))]))
                uid = method.add_user(shots)
                acc = accuracy(method.margins(target.as_user(uid)))
                scores[k].append(acc)
                detail.append({"fold": f, "user": h, "k": k, "k_used": len(shots), "acc": acc})
        if on_fold:
            on_fold(f + 1, len(folds))
    return {"curve": {str(k): float(np.mean(v)) for k, v in scores.items()}, "folds": folds, "detail": detail}
