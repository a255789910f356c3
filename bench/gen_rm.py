"""gen-rm against the other judges on the example profile's rubric-preference pairs (held-out prompts only).

    python bench/gen_rm.py --out bench/results/gen_rm.json [--heldout-fraction 0.3] [--epochs 4] [--model default]

The preference pipeline samples pairs for the example profile's training-side prompts with the default
model and labels them with the rules judge (plus demonstration ≻ sample pairs). The pairs are split by
prompt (`splits.group_split`, seed 0); on the held-out pairs it reports the agreement (`judge validate`'s
metrics) of: the rules judge (the labeler itself, so near 100 % except on demonstration pairs), the default
model as a prompted LLM judge (Prometheus A/B format, both orders), the default model as an untrained gen-rm
(A/B log-probs, both orders), a gen-rm trained on the training pairs (SmolLM2-135M + LoRA, both orders), and a
minilm Bradley-Terry RM trained on the same training pairs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from personalign.io import atomic_write_json
from personalign.runs import RunDir, package_versions

ROOT = Path(__file__).resolve().parents[1]


def phase(name: str, timings: dict[str, float]) -> None:
    """One progress line per phase with the peak RSS so far (the run is long; a killed run says where)."""
    import resource

    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"[gen_rm bench] {name}; peak RSS {peak_gib:.1f} GiB; {timings}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/gen_rm.json")
    parser.add_argument("--profile", default=str(ROOT / "configs" / "profiles" / "example.yaml"))
    parser.add_argument("--heldout-fraction", type=float, default=0.3)
    parser.add_argument("--epochs", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="default", help="policy, LLM judge and gen-rm backbone")
    parser.add_argument("--max-new-tokens", type=int, default=160, help="per sampled answer")
    parser.add_argument("--judge-max-new-tokens", type=int, default=128, help="LLM judge answer length")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from personalign.backends.registry import build_backend
    from personalign.config import ModelConfig, SamplingConfig
    from personalign.judges.base import RulesJudge
    from personalign.judges.generative import train_generative_judge
    from personalign.judges.llm import LLMJudge, profile_rubric
    from personalign.judges.preference_pipeline import PreferenceConfig, build_preferences
    from personalign.judges.reward_model import RewardModelConfig, RMJudge, split_pairs, train_reward_model
    from personalign.judges.validate import validate_judge
    from personalign.profiles import load_profile

    profile = load_profile(args.profile)
    timings: dict[str, float] = {}
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        backend = build_backend(ModelConfig(model=args.model, device="cpu"))
        preference = PreferenceConfig(labels="rules", sampling=SamplingConfig(temperature=1.0, seed=args.seed,
                                                                             max_new_tokens=args.max_new_tokens))
        pairs, report = build_preferences(profile, backend.config, preference, RunDir(Path(tmp) / "pairs"),
                                          backend=backend)
        timings["preferences_s"] = time.perf_counter() - start
        phase(f"{len(pairs)} pairs built", timings)
        train, held = split_pairs(pairs, args.heldout_fraction, args.seed)

        def agreement(judge) -> dict:  # type: ignore[no-untyped-def]
            summary, _ = validate_judge(judge, held, profile, n_boot=1000, seed=args.seed)
            return summary

        start = time.perf_counter()
        results["rules (the labeler)"] = agreement(RulesJudge())
        llm = LLMJudge(backend, max_new_tokens=args.judge_max_new_tokens)
        results["llm (prompted, same model)"] = agreement(llm)
        timings["llm_judge_s"] = time.perf_counter() - start
        phase("rules and llm judges validated", timings)

        config = RewardModelConfig(kind="gen-rm", backbone=args.model, epochs=args.epochs,
                                   heldout_fraction=args.heldout_fraction, eval_every=10_000, save_every=10_000,
                                   seed=args.seed, device="cpu")
        start = time.perf_counter()
        _, gen_summary = train_generative_judge(pairs, config, RunDir(Path(tmp) / "gen-rm"),
                                                    rubric=profile_rubric(profile), progress=False)
        timings["gen_rm_train_s"] = time.perf_counter() - start
        phase("gen-rm trained", timings)
        results["gen-rm untrained (same model)"] = {
            "accuracy": gen_summary["heldout_accuracy_before"],
            "position_bias_rate": gen_summary["heldout_position_bias_before"],
            "p_chosen": gen_summary["heldout_p_chosen_before"]}
        results["gen-rm trained"] = {**gen_summary["heldout"]}

        bt_config = RewardModelConfig(kind="bt", learning_rate=1e-4, epochs=3, heldout_fraction=args.heldout_fraction,
                                      eval_every=10_000, save_every=10_000, seed=args.seed, device="cpu")
        start = time.perf_counter()
        rm, _ = train_reward_model(pairs, bt_config, RunDir(Path(tmp) / "bt"), progress=False)
        timings["bt_train_s"] = time.perf_counter() - start
        results["bt minilm"] = agreement(RMJudge(rm))

    out = {
        "profile": args.profile, "preferences": report, "train_pairs": len(train), "heldout_pairs": len(held),
        "heldout_prompts": len({p.prompt for p in held}), "gen_rm": {k: v for k, v in gen_summary.items()
                                                                  if k != "heldout"},
        "judges": results, "timings": timings, "load_average": os.getloadavg(), "versions": package_versions(),
        "command": " ".join(sys.argv),
    }
    atomic_write_json(args.out, out)
    for name, r in results.items():
        print(f"{name:34s} accuracy {r['accuracy']:.2f}  position bias {r.get('position_bias_rate', float('nan')):.2f}")
    print(timings)


if __name__ == "__main__":
    main()
