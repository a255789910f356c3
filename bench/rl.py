"""RLAIF (GRPO + LoRA) step time on the default model, split into sampling, reward and optimization.

    python bench/rl.py --out bench/results/rl.json [--steps 3] [--threads 1]

Runs the `rlaif` method on the example profile (2 prompts × 4 samples per step, ≤ 64 new tokens,
LoRA r=16 on q/k/v/o) twice: with a cheap reward (`rules:1,length:0.5`, no model in the reward) and
with the pairwise reward (`rules:1,pairwise:0.5`, the default model judging each sample against a
reference sample in both orders). Medians over the steps after the first (which also loads things).
The baseline is the sampling time of the cheap run: every ratio is against it, measured in the same script.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from personalign.io import atomic_write_json
from personalign.runs import RunDir, package_versions

REPO = Path(__file__).resolve().parents[1]
PHASES = ("seconds_sampling", "seconds_reward", "seconds_optimization")


def run(reward: str, steps: int) -> dict:
    from personalign.backends.hf import HFBackend
    from personalign.config import ModelConfig
    from personalign.methods.rlaif import RLAIFConfig, RLAIFMethod
    from personalign.profiles import load_profile

    profile = load_profile(REPO / "configs" / "profiles" / "example.yaml")
    backend = HFBackend(ModelConfig(device="cpu"))
    method = RLAIFMethod(backend, RLAIFConfig(
        reward=reward, max_steps=steps + 1, batch_size=2, group_size=4, max_new_tokens=64, heldout="none",
        checkpoint_every=10_000, lora={"dropout": 0.0},
    ))
    with tempfile.TemporaryDirectory() as tmp:
        rundir = RunDir(tmp)
        start = time.perf_counter()
        method.fit(profile, rundir, progress=False)
        total = time.perf_counter() - start
        rows = [r for r in rundir.metrics if r.get("phase") == "rlaif"][1:]
    medians = {phase: statistics.median(r[phase] for r in rows) for phase in PHASES}
    step = sum(medians.values())
    return {"reward": reward, "dtype": str(backend.dtype), "steps_timed": len(rows), **medians,
            "median_step_s": step, "shares": {p: medians[p] / step for p in PHASES},
            "mean_reward": [r["reward"] for r in rows], "total_s": total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/rl.json"))
    parser.add_argument("--steps", type=int, default=3, help="timed steps per reward (after 1 warm-up)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cheap = run("rules:1,length:0.5", args.steps)
    pairwise = run("rules:1,pairwise:0.5", args.steps)
    baseline = cheap["seconds_sampling"]
    for result in (cheap, pairwise):
        result["ratio_vs_cheap_sampling"] = {p: result[p] / baseline for p in (*PHASES, "median_step_s")}
        print(f"{result['reward']:22s} step {result['median_step_s']:.1f}s: " + ", ".join(
            f"{p.removeprefix('seconds_')} {result[p]:.1f}s ({result['shares'][p]:.0%})" for p in PHASES), flush=True)
    atomic_write_json(args.out, {"versions": package_versions(), "threads": args.threads,
                                 "load_average_end": os.getloadavg(),
                                 "python": sys.version.split()[0], "runs": [cheap, pairwise]})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
