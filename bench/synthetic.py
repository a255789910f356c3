"""Synthetic-data yield of the default teacher on a profile: generated / repaired / rejected-by-check / kept.

    python bench/synthetic.py --profile configs/profiles/example.yaml --n-candidates 20 --best-of 4 \
        --out bench/results/synthetic_example.json [--no-repairs]

Runs `methods.synthetic.generate_synthetic` exactly as `personalize --method sft` does (the model being
trained is the teacher), re-checks every kept row against the profile's constraints, and records the
report, the kept rate, the wall time and the load average (the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from personalign.backends.hf import HFBackend
from personalign.config import ModelConfig
from personalign.io import atomic_write_json
from personalign.judges.rules import check_text
from personalign.methods.synthetic import SyntheticConfig, generate_synthetic
from personalign.profiles.loading import load_profile
from personalign.runs import package_versions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", type=Path, default=Path("configs/profiles/example.yaml"))
    parser.add_argument("--n-candidates", type=int, default=20)
    parser.add_argument("--best-of", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=192)
    parser.add_argument("--no-repairs", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench/results/synthetic.json"))
    args = parser.parse_args()
    profile = load_profile(args.profile)
    config = SyntheticConfig(n_candidates=args.n_candidates, n_keep=args.n_candidates, best_of=args.best_of,
                             max_new_tokens=args.max_new_tokens, repairs=not args.no_repairs, seed=args.seed)
    backend = HFBackend(ModelConfig())
    load_before = [round(v, 2) for v in os.getloadavg()]
    start = time.perf_counter()
    rows, report = generate_synthetic(profile, backend, config, progress=True)
    seconds = time.perf_counter() - start
    failing = [r["prompt"] for r in rows if not all(c.passed for c in check_text(r["output"], profile.constraints))]
    result = {"profile": str(args.profile), "config": config.to_dict(), "report": report,
              "kept_rows_failing_constraints": len(failing), "seconds": round(seconds, 1),
              "load_average_before": load_before, "load_average_after": [round(v, 2) for v in os.getloadavg()],
              "rows": rows, "versions": package_versions()}
    atomic_write_json(args.out, result)
    print(json.dumps({k: v for k, v in result.items() if k not in ("rows", "versions", "config")}, indent=1))


if __name__ == "__main__":
    main()
