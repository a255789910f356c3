"""Reward-model training throughput (minilm vs SmolLM2) and `judge validate` results of rules, llm and a minilm RM.

    python bench/judges.py --out bench/results/judges.json [--rm-steps 6] [--llm-limit 12] [--rm-limit 100]

Part 1: BT reward-model training on hh-rlhf harmless pairs (batch 8 pairs, ≤ 128 tokens each) through
`train_reward_model` (the BT loss through the local engine) for each backbone: minilm (full fine-tuning)
and SmolLM2-135M (LoRA r=8 on all linear layers; `--with-full` adds full fine-tuning, ≈10 GB of RAM).
Seconds per optimizer step (forward_backward + optim_step) are timed by the trainer's `on_step` hook; the
median after one warm-up step gives pairs/s, and the ratio is against minilm measured in the same script.
Part 2: `judge validate` on the four built-in sets: rules (every pair), a minilm RM trained on
hh-rlhf harmless (`--rm-train` pairs, 1 epoch; its own held-out accuracy reported) on `--rm-limit`
pairs per set, and the default model as LLM judge on `--llm-limit` pairs per set (both orders).
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

SETS = ["prometheus-hhh", "autoj", "llmbar", "mtbench-human"]


def rm_throughput(backbone: str, lora: bool, steps: int, pairs: list, max_length: int) -> dict:
    import personalign.judges.reward_model as rmmod

    times: list[float] = []

    config = rmmod.RewardModelConfig(
        backbone=backbone, lora=lora, max_steps=steps + 1, batch_size=8, max_length=max_length, learning_rate=1e-4,
        eval_every=10_000, save_every=10_000, heldout_fraction=0.0, device="cpu",
    )
    with tempfile.TemporaryDirectory() as tmp:
        rmmod.train_reward_model(pairs[: 8 * (steps + 1)], config, RunDir(tmp), progress=False, heldout=[],
                                 on_step=lambda step, seconds: times.append(seconds))
    measured = times[1:]  # the first step pays one-off allocation costs
    median = statistics.median(measured)
    return {"backbone": backbone, "lora": lora, "steps": len(measured), "median_step_s": median,
            "pairs_per_s": 8 / median, "step_times_s": measured}


def validate(judge, sets: list[str], limit: int | None, seed: int = 0) -> dict:
    from personalign.judges.labeled_sets import load_labeled
    from personalign.judges.validate import validate_judge

    results = {}
    for name in sets:
        pairs = load_labeled(name, limit=limit, seed=seed)
        start = time.perf_counter()
        summary, _ = validate_judge(judge, pairs, n_boot=1000, seed=seed)
        summary["seconds"] = time.perf_counter() - start
        results[name] = summary
        print(f"  {judge.name:5s} {name:15s} n={summary['n']:4d} acc={summary['accuracy']:.2f} "
              f"kappa={summary['kappa']:.2f} ties={summary['tie_rate']:.2f} "
              f"unparseable={summary['unparseable_rate']:.2f} ({summary['seconds']:.0f}s)", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/judges.json"))
    parser.add_argument("--rm-steps", type=int, default=6, help="timed RM steps per backbone (after 1 warm-up)")
    parser.add_argument("--rm-train", type=int, default=480, help="hh-rlhf pairs to train the validated minilm RM")
    parser.add_argument("--rm-limit", type=int, default=100, help="pairs per set for the RM judge")
    parser.add_argument("--llm-limit", type=int, default=12, help="pairs per set for the LLM judge")
    parser.add_argument("--rm-max-length", type=int, default=128, help="tokens per (prompt, response)")
    parser.add_argument("--with-full", action="store_true", help="also time full fine-tuning of SmolLM2 (≈10 GB)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy shared CPU)")
    parser.add_argument("--skip", default="", help="comma list of parts to skip: throughput,rules,rm,llm")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    skip = set(filter(None, args.skip.split(",")))

    from personalign.judges.base import RulesJudge
    from personalign.judges.labeled_sets import load_labeled

    hh = load_labeled("hh-rlhf-harmless", seed=0)
    result: dict = {"versions": package_versions(), "threads": args.threads, "python": sys.version.split()[0],
                    "load_average_start": os.getloadavg(), "args": vars(args) | {"out": str(args.out)}}
    if "throughput" not in skip:
        print("RM training throughput", flush=True)
        backbones = [("minilm", False), ("default", True)] + ([("default", False)] if args.with_full else [])
        runs = [rm_throughput(b, lora, args.rm_steps, hh, args.rm_max_length) for b, lora in backbones]
        base = runs[0]["pairs_per_s"]
        for run in runs:
            run["ratio_vs_minilm"] = run["pairs_per_s"] / base
            print(f"  {run['backbone']:8s} lora={run['lora']!s:5s} {run['pairs_per_s']:.1f} pairs/s "
                  f"(×{run['ratio_vs_minilm']:.2f} of minilm)", flush=True)
        result["rm_throughput"] = runs
    result["validate"] = {}
    if "rules" not in skip:
        print("judge validate: rules (all pairs)", flush=True)
        result["validate"]["rules"] = validate(RulesJudge(), SETS, None)
    if "rm" not in skip:
        from personalign.judges.reward_model import RewardModelConfig, RMJudge, train_reward_model

        print(f"training a minilm RM on {args.rm_train} hh-rlhf harmless pairs", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            config = RewardModelConfig(backbone="minilm", epochs=1, batch_size=16, max_length=256, learning_rate=5e-5,
                                       eval_every=1000, save_every=10_000, heldout_fraction=0.1, device="cpu")
            rm, train_summary = train_reward_model(hh[: args.rm_train], config, RunDir(tmp), progress=False)
        result["rm_training"] = train_summary
        print(f"  held-out accuracy {train_summary['heldout_accuracy_before']:.2f} → "
              f"{train_summary['heldout_accuracy']:.2f}", flush=True)
        result["validate"]["rm-minilm-hh"] = validate(RMJudge(rm), SETS, args.rm_limit)
    if "llm" not in skip:
        from personalign.backends.hf import HFBackend
        from personalign.config import ModelConfig
        from personalign.judges.llm import LLMJudge

        print(f"judge validate: llm (default model, {args.llm_limit} pairs per set, both orders)", flush=True)
        judge = LLMJudge(HFBackend(ModelConfig(device="cpu", batch_size=8)), max_new_tokens=96, max_chars=1200)
        result["validate"]["llm-default"] = validate(judge, SETS, args.llm_limit)
    result["load_average_end"] = os.getloadavg()
    atomic_write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
