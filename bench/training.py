"""LoRA training speed and memory of the default model vs a raw torch loop, and DITTO iteration time split.

    python bench/training.py --out bench/results/training.json [--steps 3] [--skip-ditto]

Part 1, per dtype (fp32, bf16), in a fresh subprocess each so peak RSS is per dtype: one LoRA step
(r=16 on q/k/v/o, batch 8 × 256 tokens) through personalign's loop (`TrainingSession.update`: the local
engine's `forward_backward(CrossEntropy)` + `optim_step`) and through a raw loop (HF `labels=` loss, AdamW, no
clipping/scheduler), on
the same model and batch, alternating so background load hits both alike. Medians over --steps after
one warm-up step each. Part 2: one quick DITTO run (2 iterations) on the example profile; seconds per
iteration split into sampling and optimization, from its own per-iteration metrics.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from personalign.io import atomic_write_json
from personalign.runs import package_versions

REPO = Path(__file__).resolve().parents[1]
SEQ, BATCH = 256, 8


def make_batch(backend, batch: int = BATCH, seq: int = SEQ) -> list[tuple[list[int], list[int]]]:
    """8 real chat examples from the example profile, each cut or padded with text to exactly 256 tokens."""
    from personalign.profiles import load_profile

    profile = load_profile(REPO / "configs" / "profiles" / "example.yaml")
    pairs = []
    for i in range(batch):
        demo = profile.demonstrations[i % len(profile.demonstrations)]
        prompt, completion = backend.prompt_completion_ids([{"role": "user", "content": demo.prompt}], demo.output * 3)
        pairs.append((prompt, completion[: seq - len(prompt)]))
    assert all(len(p) + len(c) == seq for p, c in pairs)
    return pairs


def worker(dtype: str, steps: int) -> dict:
    from personalign.backends.hf import HFBackend
    from personalign.config import ModelConfig
    from personalign.engines.base import CrossEntropy, LoraSettings
    from personalign.engines.local import LocalEngine, sft_batch
    from personalign.methods.training import TrainConfig, TrainingSession, datums

    torch.manual_seed(0)
    backend = HFBackend(ModelConfig(dtype=dtype, device="cpu"))
    engine = LocalEngine(backend, LoraSettings(r=16, dropout=0.0))
    model = engine.model
    pairs = make_batch(backend)
    data = datums(pairs)
    batch = sft_batch(pairs, backend.tokenizer.pad_token_id)
    session = TrainingSession(engine, TrainConfig(lr=1e-5), None)
    raw_opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def ours() -> float:
        start = time.perf_counter()
        session.update(data, CrossEntropy())
        return time.perf_counter() - start

    def raw() -> float:
        start = time.perf_counter()
        model.train()
        loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
        loss.backward()
        raw_opt.step()
        raw_opt.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    ours(), raw()  # warm-up
    ours_s, raw_s = [], []
    for step in range(steps):  # alternate which goes first, so a load trend hits both alike
        if step % 2:
            raw_s.append(raw())
            ours_s.append(ours())
        else:
            ours_s.append(ours())
            raw_s.append(raw())
    return {
        "dtype": dtype, "steps": steps, "ours_s": ours_s, "raw_s": raw_s,
        "ours_median_s": statistics.median(ours_s), "raw_median_s": statistics.median(raw_s),
        "ratio_ours_over_raw": statistics.median(ours_s) / statistics.median(raw_s),
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }


def ditto_iterations(tmp: Path) -> dict:
    from personalign.backends.hf import HFBackend
    from personalign.config import ModelConfig
    from personalign.methods.base import build_personalizer
    from personalign.methods.ditto import DittoMethod
    from personalign.profiles import load_profile
    from personalign.runs import RunDir

    backend = HFBackend(ModelConfig(device="cpu"))
    config = {**DittoMethod.quick_overrides(), "sft_steps": 2}  # the warm start is SFT, measured in part 1
    method = build_personalizer("ditto", backend, config)
    start = time.perf_counter()
    method.fit(load_profile(REPO / "configs" / "profiles" / "example.yaml"), RunDir(tmp))
    rows = [r for r in RunDir(tmp).metrics if r.get("phase") == "ditto"]
    return {
        "dtype": str(backend.dtype), "config": method.config.to_dict(), "total_s": time.perf_counter() - start,
        "iterations": [{k: r[k] for k in ("iteration", "sampling_seconds", "optimization_seconds", "pairs",
                                          "mean_sample_tokens")} for r in rows],
        "median_sampling_s": statistics.median(r["sampling_seconds"] for r in rows),
        "median_optimization_s": statistics.median(r["optimization_seconds"] for r in rows),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "training.json"))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--skip-ditto", action="store_true")
    parser.add_argument("--skip-lora", action="store_true")
    parser.add_argument("--dtypes", default="fp32,bf16", help="comma list of fp32, bf16")
    parser.add_argument("--worker", choices=["fp32", "bf16"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.steps)))
        return
    results: dict = {"versions": package_versions(), "threads": torch.get_num_threads(), "lora_step": {}}
    for dtype in () if args.skip_lora else args.dtypes.split(","):
        out = subprocess.run([sys.executable, __file__, "--worker", dtype, "--steps", str(args.steps)],
                             capture_output=True, text=True, check=True)
        results["lora_step"][dtype] = json.loads(out.stdout.strip().splitlines()[-1])
        print(dtype, {k: v for k, v in results["lora_step"][dtype].items() if not isinstance(v, list)}, flush=True)
    if not args.skip_ditto:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            results["ditto"] = ditto_iterations(Path(tmp))
        print("ditto", {k: v for k, v in results["ditto"].items() if k != "config"}, flush=True)
    out_path = Path(args.out)
    if out_path.is_file():  # a partial rerun (--skip-*) keeps the other part's earlier numbers
        old = json.loads(out_path.read_text())
        results = {**old, **{k: v for k, v in results.items() if v},
                   "lora_step": {**old.get("lora_step", {}), **results["lora_step"]}}
    atomic_write_json(out_path, results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
