"""A small recorded sweep of SFT training settings on two profiles, scored by constraint compliance.

    nice -n 10 python bench/sweep_sft.py --profiles configs/profiles/example.yaml,configs/profiles/ops-manager.yaml \
        --configs base,lr5e-4,mlp,mlp_lr5e-4_warm --out bench/results/sweep_sft.json

Per profile: synthetic rows are generated once (`methods.synthetic`, the default teacher, cached beside the
JSON) so every setting trains on the same data; then the `prompt` baseline and each setting are scored on the
profile's 12 eval prompts (temperature 0.7, seed 0). Each trained adapter is scored twice: as `sft` (bare
prompt) and as `sft+prompt` (the profile's prompt). Results are written after every setting, so a sweep cut
short still records what finished. Settings start from SFT's quick settings (the demo's).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from personalign.backends.hf import HFBackend
from personalign.config import ModelConfig, SamplingConfig
from personalign.io import atomic_write_json, atomic_write_jsonl, read_json, read_jsonl
from personalign.judges.rules import compliance
from personalign.methods.prompting import PromptMethod
from personalign.methods.sft import SFTMethod
from personalign.methods.synthetic import SyntheticConfig, generate_synthetic
from personalign.profiles.loading import load_profile
from personalign.runs import RunDir, package_versions

ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]
MLP = [*ATTN, "gate_proj", "up_proj", "down_proj"]
OLD = {"lr": 2e-4, "warmup_steps": 0}  # the defaults before this sweep; each setting is spelled out in full
SETTINGS: dict[str, dict[str, Any]] = {
    "base": {**OLD, "lora": {"target_modules": ATTN}},
    "lr5e-4": {"lr": 5e-4, "warmup_steps": 0, "lora": {"target_modules": ATTN}},
    "mlp": {**OLD, "lora": {"target_modules": MLP}},
    "mlp_lr5e-4_warm": {"lr": 5e-4, "warmup_steps": 3, "lora": {"target_modules": MLP}},  # today's default
    "mlp_r32_steps48": {**OLD, "max_steps": 48, "lora": {"r": 32, "alpha": 64, "target_modules": MLP}},
    "mlp_lr1e-3_warm": {"lr": 1e-3, "warmup_steps": 3, "lora": {"target_modules": MLP}},
}


def score(backend: HFBackend, method: Any, prompts: list[str], profile: Any, max_new_tokens: int) -> dict[str, Any]:
    start = time.perf_counter()
    outs = [s[0] for s in method.generate(prompts, SamplingConfig(temperature=0.7, max_new_tokens=max_new_tokens))]
    report = compliance(outs, profile.constraints)
    return {**report.as_dict(), "gen_seconds": round(time.perf_counter() - start, 1), "outputs": outs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", default="configs/profiles/example.yaml,configs/profiles/ops-manager.yaml")
    parser.add_argument("--configs", default=",".join(SETTINGS))
    parser.add_argument("--n-candidates", type=int, default=12)
    parser.add_argument("--best-of", type=int, default=4)
    parser.add_argument("--fewshot-k", type=int, default=None, help="demonstrations shown to the teacher")
    parser.add_argument("--max-new-tokens", type=int, default=192)
    parser.add_argument("--out", type=Path, default=Path("bench/results/sweep_sft.json"))
    args = parser.parse_args()
    results: dict[str, Any] = read_json(args.out) if args.out.is_file() else {}
    results.setdefault("runs", {})
    results["versions"] = package_versions()
    for profile_path in args.profiles.split(","):
        profile = load_profile(profile_path)
        key = Path(profile_path).stem
        prompts = [p.prompt for p in profile.eval_prompts][:12]
        cache = args.out.with_name(f"sweep_synthetic_{key}.jsonl")
        if not cache.is_file():
            backend = HFBackend(ModelConfig())
            rows, report = generate_synthetic(profile, backend, SyntheticConfig(
                n_candidates=args.n_candidates, n_keep=args.n_candidates, best_of=args.best_of,
                fewshot_k=args.fewshot_k))
            atomic_write_jsonl(cache, rows)
            results["runs"].setdefault(key, {})["synthetic_report"] = report
        done = results["runs"].setdefault(key, {})
        if "prompt" not in done:
            backend = HFBackend(ModelConfig())
            method = PromptMethod(backend)
            method.fit(profile)
            done["prompt"] = score(backend, method, prompts, profile, args.max_new_tokens)
            atomic_write_json(args.out, results)
        for name in args.configs.split(","):
            if name in done:
                continue
            backend = HFBackend(ModelConfig())
            overrides = {**SFTMethod.quick_overrides(), "synthetic_data": str(cache), **SETTINGS[name]}
            overrides.pop("synthetic", None)
            method = SFTMethod(backend, SFTMethod.config_class.model_validate(overrides))
            load = [round(v, 2) for v in os.getloadavg()]
            start = time.perf_counter()
            with TemporaryDirectory() as tmp:
                method.fit(profile, RunDir(tmp))
                train_rows = read_jsonl(Path(tmp) / "metrics.jsonl")
            stats = next((r for r in train_rows if r.get("phase") == "sft_done"), {})
            entry = {"settings": SETTINGS[name], "train_seconds": round(time.perf_counter() - start, 1),
                     "train": {k: stats.get(k) for k in ("steps", "train_rows", "val_rows", "best_val_loss",
                                                          "early_stopped")},
                     "final_loss": next((r["loss"] for r in reversed(train_rows) if "loss" in r), None),
                     "load_average": load}
            entry["sft"] = score(backend, method, prompts, profile, args.max_new_tokens)
            prompted = PromptMethod(backend)  # same trained weights, the profile's prompt: sft+prompt
            prompted.fit(profile)
            entry["sft+prompt"] = score(backend, prompted, prompts, profile, args.max_new_tokens)
            done[name] = entry
            atomic_write_json(args.out, results)
            print(json.dumps({"profile": key, "setting": name, "sft": entry["sft"]["compliance"],
                              "sft+prompt": entry["sft+prompt"]["compliance"], "prompt": done["prompt"]["compliance"],
                              "train_seconds": entry["train_seconds"]}), flush=True)


if __name__ == "__main__":
    main()
