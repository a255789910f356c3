"""How far a judge agrees with labeled pairs: accuracy, Cohen's kappa, tie / unparseable / position-bias rates.

Each metric comes with a percentile bootstrap 95 % CI (pairs resampled with replacement). Unparseable
verdicts count as wrong for accuracy and as their own class for kappa; they are never mapped to a label.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from personalign.judges.base import Judge, Verdict
from personalign.judges.labeled_sets import LabeledPair
from personalign.profiles.schema import Profile

UNPARSEABLE = "unparseable"


def _kappa(gold: Sequence[str], pred: Sequence[str]) -> float:
    from sklearn.metrics import cohen_kappa_score

    labels = sorted(set(gold) | set(pred))
    if len(labels) < 2:
        return float("nan")  # kappa is undefined when everything is one class
    with np.errstate(divide="ignore", invalid="ignore"):
        value = cohen_kappa_score(gold, pred, labels=labels)
    return float(value)


def agreement_metrics(gold: Sequence[str], verdicts: Sequence[Verdict]) -> dict[str, float]:
    """Point estimates on one sample of pairs."""
    pred = [v.winner or UNPARSEABLE for v in verdicts]
    n = len(gold)
    consistency = [v.position_consistent for v in verdicts if v.position_consistent is not None]
    non_tie = [i for i, g in enumerate(gold) if g != "tie"]
    decided = [i for i, p in enumerate(pred) if p in ("A", "B")]
    return {
        "accuracy": sum(p == g for p, g in zip(pred, gold, strict=True)) / n if n else float("nan"),
        "accuracy_non_tie_gold": (sum(pred[i] == gold[i] for i in non_tie) / len(non_tie)) if non_tie else float("nan"),
        # Accuracy where the judge named a winner: a judge that mostly ties can still be right when it speaks.
        "accuracy_decided": (sum(pred[i] == gold[i] for i in decided) / len(decided)) if decided else float("nan"),
        "kappa": _kappa(gold, pred),
        "tie_rate": sum(p == "tie" for p in pred) / n if n else float("nan"),
        "unparseable_rate": sum(p == UNPARSEABLE for p in pred) / n if n else float("nan"),
        # Share of pairs, among those where both orders parsed, whose verdict changed with the order.
        "position_bias_rate": (sum(not c for c in consistency) / len(consistency)) if consistency else float("nan"),
    }


def bootstrap_ci(
    gold: Sequence[str], verdicts: Sequence[Verdict], n_boot: int = 1000, seed: int = 0,
    metric_fn: Callable[[Sequence[str], Sequence[Verdict]], dict[str, float]] = agreement_metrics,
) -> dict[str, tuple[float, float]]:
    """Percentile 95 % interval of every metric over `n_boot` resamples of the pairs."""
    rng = np.random.default_rng(seed)
    n = len(gold)
    samples: dict[str, list[float]] = {}
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        values = metric_fn([gold[i] for i in idx], [verdicts[i] for i in idx])
        for key, value in values.items():
            if not math.isnan(value):
                samples.setdefault(key, []).append(value)
    return {k: (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))) for k, v in samples.items()}


def validate_judge(
    judge: Judge, pairs: Sequence[LabeledPair], profile: Profile | None = None, n_boot: int = 1000, seed: int = 0,
    batch_size: int = 16, progress: bool = False,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run the judge on every pair; return (summary with CIs, per-pair rows)."""
    verdicts: list[Verdict] = []
    batches = [pairs[i : i + batch_size] for i in range(0, len(pairs), batch_size)]
    iterator: Any = batches
    if progress:
        from personalign.progress import track

        iterator = track(batches, description=f"judging with {judge.name}", transient=True)
    for batch in iterator:
        verdicts += judge.compare_many([p.prompt for p in batch], [p.a for p in batch], [p.b for p in batch],
                                       profile, [p.rubric for p in batch])
    gold = [p.label for p in pairs]
    summary: dict[str, Any] = {"judge": judge.name, "n": len(pairs), **agreement_metrics(gold, verdicts)}
    summary["ci95"] = bootstrap_ci(gold, verdicts, n_boot=n_boot, seed=seed)
    rows = [
        {"source": p.source, "gold": p.label, "pred": v.winner, "orders": v.orders, "feedback": v.feedback[:300]}
        for p, v in zip(pairs, verdicts, strict=True)
    ]
    return summary, rows
