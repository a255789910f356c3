"""The three judgements of a method: per-user accuracy (and fairness), personalization tax, adaptation.

- accuracy: on each user's test pairs; mean over users, worst user, std, and the mean over minority users.
- tax: accuracy on general-purpose comparisons (tax sets) by category, scored as each training user and
  averaged over users (a personalized RM is used by its user); the tax itself is the drop from a base
  model's accuracy, with a paired bootstrap CI over tax pairs (`tax_drop`).
- adaptation: users are split into folds; each fold's users are held out, the method is trained on the
  others, then given k labeled pairs of each held-out user and scored on that user's test pairs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from personalign.prefbench.methods.base import Dimensions, PairSet, PrefMethod, accuracy, correct


def sample_per_user(pairs: PairSet, cap: int | None, seed: int) -> PairSet:
    """At most `cap` rows per user (seeded sample, kept in order): how slow methods are scored."""
    if cap is None:
        return pairs
    rng = np.random.default_rng(seed)
    keep = []
    for u in np.unique(pairs.users):
        rows = np.flatnonzero(pairs.users == u)
        keep.append(rows if len(rows) <= cap else np.sort(rng.choice(rows, size=cap, replace=False)))
    return pairs.subset(np.concatenate(keep))


def per_user_accuracy(method: PrefMethod, test: PairSet, users: Sequence[str]) -> dict[str, float]:
    margins = method.margins(test)
    mask = [test.users == u for u in range(len(users))]
    return {name: accuracy(margins[m], test.labels[m]) for m, name in zip(mask, users, strict=True)}


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


def tax_scores(method: PrefMethod, tax: PairSet, n_users: int) -> np.ndarray:
    """Per tax pair: its correctness averaged over the scored users (once if the method ignores users)."""
    users = [0] if method.user_agnostic else list(range(n_users))
    return np.mean([correct(method.margins(tax.as_user(u)), tax.labels) for u in users], axis=0)


def by_category(scores: np.ndarray, categories: np.ndarray) -> dict[str, float]:
    return {str(cat): float(np.mean(scores[categories == cat])) for cat in dict.fromkeys(categories.tolist())}


def margin_tax(margins: np.ndarray, categories: np.ndarray) -> dict[str, float]:
    """Per category: accuracy of chosen-first `margins` (the untrained backbone's baseline)."""
    return by_category(correct(margins), categories)


def bootstrap_ci(values: np.ndarray, n_boot: int, seed: int, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of `values` (rows resampled with replacement)."""
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(axis=1)
    tail = 100 * (1 - level) / 2
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def tax_drop(base: np.ndarray, method: np.ndarray, categories: np.ndarray, n_boot: int = 1000,
             seed: int = 0, min_pairs: int = 30) -> dict[str, dict[str, Any]]:
    """Per category: the base model's accuracy with its CI and, when the base is above chance (CI lower
    bound > 0.5, on at least `min_pairs` pairs: a percentile bootstrap of a handful of pairs is no CI), the
    method's drop from it (base − method, paired bootstrap CI over the same pairs). Where the base is at
    chance there is no capability to lose: `measurable` is False and no drop is given."""
    out: dict[str, dict[str, Any]] = {}
    for cat in dict.fromkeys(categories.tolist()):
        rows = categories == cat
        base_ci = bootstrap_ci(base[rows], n_boot, seed)
        entry: dict[str, Any] = {"n": int(rows.sum()), "base_acc": float(base[rows].mean()), "base_ci": base_ci,
                                 "measurable": base_ci[0] > 0.5 and int(rows.sum()) >= min_pairs}
        if entry["measurable"]:
            diff = base[rows] - method[rows]
            entry["drop"] = float(diff.mean())
            entry["drop_ci"] = bootstrap_ci(diff, n_boot, seed)
        out[str(cat)] = entry
    return out


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
    dimensions: Dimensions | None = None,
    general: PairSet | None = None,
) -> dict[str, Any]:
    """Mean accuracy of held-out users after k labeled pairs, for each k; plus per-fold detail.

    Each fold trains on the other users only (plus the general-signal pairs, as one more pseudo-user,
    when given); a held-out user then brings its k pairs and, where the data set has preference
    dimensions, its declared weights (which are not labels)."""
    folds = user_folds(n_users, n_folds, seed)
    scores: dict[int, list[float]] = {k: [] for k in ks}
    detail = []
    for f, held in enumerate(folds):
        seen = [u for u in range(n_users) if u not in held]
        fold_train, n_fit = remap_users(train, seen), len(seen)
        fold_dims = dimensions.for_users(seen) if dimensions is not None else None
        if general is not None:
            fold_train, n_fit = PairSet.concat([fold_train, general.as_user(n_fit)]), n_fit + 1
            if fold_dims is not None:
                fold_dims = fold_dims.with_user(np.full(len(fold_dims.names), 1 / len(fold_dims.names)))
        method = make().fit(fold_train, n_fit, fold_dims)
        for h in held:
            mine, target = train.for_user(h), test.for_user(h)
            rng = np.random.default_rng(seed * 1009 + h)
            order = rng.permutation(len(mine))
            for k in ks:
                shots = mine.subset(np.sort(order[: min(k, len(mine))]))
                uid = method.add_user(shots, dimensions.declared(h) if dimensions is not None else None)
                acc = accuracy(method.margins(target.as_user(uid)), target.labels)
                scores[k].append(acc)
                detail.append({"fold": f, "user": h, "k": k, "k_used": len(shots), "acc": acc})
        if on_fold:
            on_fold(f + 1, len(folds))
    return {"curve": {str(k): float(np.mean(v)) for k, v in scores.items()}, "folds": folds, "detail": detail}
