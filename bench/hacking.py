"""Reward-hacking detector: detection and false-alarm rates on synthetic noisy RL logs.

    python bench/hacking.py --out bench/results/hacking.json [--logs 500]

Each log has 20 evaluations (every 5 steps); the reward rises 0.02 per evaluation, the held-out evaluator
drifts up 0.003 per evaluation, both with Gaussian noise (`evaluation.hacking.synthetic_log`). A diverging
log's held-out score falls `drop` per evaluation from evaluation 8 on; a healthy log's never does.
Detection = fired at or after the onset on a diverging log; false alarm = fired on a healthy log. The
baseline, run in the same script on the same logs, is the rule the detector replaced: strictly opposite
movement (reward up, held-out down) at each of 3 consecutive evaluations. No timing: nothing here
depends on machine load.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path
from typing import Any

from personalign.evaluation.hacking import DEFAULT_ALPHA, DEFAULT_WINDOW, detect_divergence, synthetic_log
from personalign.io import atomic_write_json
from personalign.runs import package_versions

ONSET = 8
NOISES = (0.02, 0.05, 0.08)
DROPS = (0.01, 0.02, 0.04)


def strict_rule(log: list[dict[str, Any]], window: int = 3) -> int | None:
    """The replaced detector: first evaluation followed by `window` strictly diverging moves."""
    for start in range(len(log) - window):
        segment = log[start : start + window + 1]
        if all(b["reward"] > a["reward"] and b["heldout"] < a["heldout"] for a, b in itertools.pairwise(segment)):
            return start + window  # the evaluation at which it fires
    return None


def rates(noise: float, drop: float, n_logs: int) -> dict[str, Any]:
    counts = {"trend": [0, 0], "strict": [0, 0]}  # [detected, false alarms]
    onset_step = (ONSET + 1) * 5
    for i in range(n_logs):
        diverging = synthetic_log(onset=ONSET, noise=noise, drop=drop, seed=2 * i)
        healthy = synthetic_log(onset=None, noise=noise, drop=drop, seed=2 * i + 1)
        found = detect_divergence(diverging)
        counts["trend"][0] += found is not None and found.until_step >= onset_step
        counts["trend"][1] += detect_divergence(healthy) is not None
        fired = strict_rule(diverging)
        counts["strict"][0] += fired is not None and fired >= ONSET
        counts["strict"][1] += strict_rule(healthy) is not None
    return {"noise": noise, "drop_per_eval": drop, "n_logs": n_logs,
            **{f"{name}_{key}": value / n_logs for name, (det, fa) in counts.items()
               for key, value in (("detection", det), ("false_alarm", fa))}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/hacking.json"))
    parser.add_argument("--logs", type=int, default=500, help="diverging and healthy logs per cell")
    args = parser.parse_args(argv)
    cells = [rates(noise, drop, args.logs) for noise in NOISES for drop in DROPS]
    result = {"versions": package_versions(), "window": DEFAULT_WINDOW, "alpha": DEFAULT_ALPHA,
              "evaluations": 20, "onset": ONSET, "cells": cells}
    atomic_write_json(args.out, result)
    for cell in cells:
        print(f"noise {cell['noise']:.2f} drop {cell['drop_per_eval']:.2f}: trend test detects "
              f"{cell['trend_detection']:.0%} (false alarms {cell['trend_false_alarm']:.1%}); strict rule "
              f"{cell['strict_detection']:.0%} ({cell['strict_false_alarm']:.1%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
