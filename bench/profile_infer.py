"""Validity of `profile infer` on real people: inferred constraints on the person's held-out texts vs others'.

    python bench/profile_infer.py --out bench/results/profile_infer_enron.json [--data-dir DIR]

Per Enron sender: infer constraints from k of their emails (k = 7, DITTO's demonstrations, and half of them),
then report the share of the sender's other emails that pass every inferred constraint (target ≥ 90 %) and the
share of other senders' emails that do (should be clearly lower). No model is involved; seeds are fixed.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from personalign.io import atomic_write_json, read_jsonl
from personalign.profiles.infer import validity
from personalign.settings import data_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench/results/profile_infer_enron.json"))
    args = parser.parse_args()
    rows = read_jsonl(data_dir(args.data_dir) / "enron" / "enron_sent.jsonl")
    by_sender: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        by_sender[row["sender"]].append(row["body"])
    report: dict[str, object] = {}
    for label, k in (("k7", 7), ("half", None)):
        result = validity(dict(by_sender), n_infer=k, seed=args.seed, max_others=400)
        own = [v["own_pass"] for v in result.values()]
        others = [v["others_pass"] for v in result.values()]
        report[label] = {"per_sender": result, "mean_own_pass": float(np.mean(own)),
                         "mean_others_pass": float(np.mean(others)),
                         "senders_own_at_least_90": int(sum(o >= 0.9 for o in own)), "n_senders": len(own)}
        print(label, json.dumps({k: v for k, v in report[label].items() if k != "per_sender"}))
        for sender, v in result.items():
            print(f"  {sender:14s} own {v['own_pass']:.2f}  others {v['others_pass']:.2f}  "
                  f"sign_off={v['constraints'].get('sign_off')!r}")
    atomic_write_json(args.out, {"seed": args.seed, **report})


if __name__ == "__main__":
    main()
