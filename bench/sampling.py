"""Generation throughput of the hf backend vs a raw `model.generate` loop, by batch size, and model load time.

    python bench/sampling.py --out bench/results/sampling.json [--repeats 3] [--max-new-tokens 64] [--device cpu]
    python bench/sampling.py --batches-only --batches 8,16,32,64,128 --out bench/results/sampling_batches.json
    python bench/sampling.py --greedy-only --greedy-batches 1,8,32 --out bench/results/sampling_greedy.json

Part 1: both implementations run greedy decoding on the same chat prompts in the same process, so their
outputs (and token counts) are identical and the ratio isolates backend overhead. Part 2 (the batch sweep,
which chose `backends.hf.default_batch_size`): the backend alone samples (temperature 0.7, as DITTO,
synthetic data and RL do) one batch of B distinct prompts for each B, ratio against batch 8 in the same
run, and beside it raw transformers `model.generate` decoding the same prompts greedily (the host's ceiling for
this model: no logits processors, no sampling). Tokens/s counts generated tokens up to each sequence's end-of-turn,
medians over `--repeats`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from personalign.backends.default_model import ensure_default_model
from personalign.backends.hf import HFBackend
from personalign.config import ModelConfig, SamplingConfig
from personalign.io import atomic_write_json
from personalign.runs import package_versions

PROMPTS = [
    "Write a short email asking a professor for a meeting next week.",
    "Thank a colleague for covering my shift on Saturday.",
    "Reply to a recruiter with my availability on Tuesday and Thursday afternoons.",
    "Introduce two friends who both love rock climbing.",
    "Ask my landlord to fix the kitchen faucet.",
    "Decline a dinner invitation politely.",
    "Follow up on a job application I sent two weeks ago.",
    "Congratulate a teammate on finishing her thesis.",
]


def count_new_tokens(sequences: torch.Tensor, eos_ids: set[int]) -> int:
    total = 0
    for row in sequences.tolist():
        n = 0
        for tok in row:
            n += 1
            if tok in eos_ids:
                break
        total += n
    return total


def raw_generate(model, tokenizer, convs, max_new_tokens: int) -> int:
    """The baseline: what a user would write with transformers alone (left padding, one batch)."""
    texts = [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in convs]
    tokenizer.padding_side = "left"
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    with torch.no_grad():
        out = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                             temperature=None, top_p=None, top_k=None)
    return count_new_tokens(out[:, enc["input_ids"].shape[1]:], {tokenizer.eos_token_id, tokenizer.pad_token_id})


def backend_generate(backend: HFBackend, convs, max_new_tokens: int) -> int:
    outs = backend.generate(convs, SamplingConfig(temperature=0.0, max_new_tokens=max_new_tokens))
    # Re-tokenize the returned texts (+1 end-of-turn where the model stopped early) to count generated tokens.
    total = 0
    for (text,) in outs:
        n = len(backend.tokenizer(text, add_special_tokens=False)["input_ids"])
        total += min(max_new_tokens, n + 1)
    return total


def sweep_prompts(n: int) -> list[str]:
    """n distinct prompts: the 8 above with a varying recipient name, so no two rows of a batch are equal."""
    names = ["Sam", "Ana", "Lee", "Kim", "Omar", "Ivy", "Raj", "Zoe"]
    return [f"{PROMPTS[i % len(PROMPTS)]} (Write it for {names[(i // len(PROMPTS)) % len(names)]}.)"
            for i in range(n)]


def batch_sweep(device: str, batches: list[int], repeats: int, max_new_tokens: int) -> dict:
    """Sampled tokens/s of the backend at each batch size (one batch of B prompts per call), vs batch 8, and the
    raw greedy loop's on the same prompts.

    Batch sizes alternate within each repeat (8, 16, 32, 64, 8, 16, ...) on one loaded model, so a burst of
    load from other jobs on a shared machine hits every size alike instead of one.
    """
    backend = HFBackend(ModelConfig(device=device))
    sampling = SamplingConfig(temperature=0.7, max_new_tokens=max_new_tokens)
    backend.generate([[{"role": "user", "content": PROMPTS[0]}]], sampling.model_copy(update={"max_new_tokens": 4}))
    speeds: dict[int, list[float]] = {b: [] for b in batches}
    raw_speeds: dict[int, list[float]] = {b: [] for b in batches}
    seconds: dict[int, list[float]] = {b: [] for b in batches}
    for repeat in range(repeats):
        for batch_size in batches:
            backend.batch_size = batch_size
            convs = [[{"role": "user", "content": p}] for p in sweep_prompts(batch_size)]
            start = time.perf_counter()
            outs = backend.generate(convs, sampling.model_copy(update={"seed": repeat}))
            elapsed = time.perf_counter() - start
            tokens = sum(min(max_new_tokens, len(backend.tokenizer(t, add_special_tokens=False)["input_ids"]) + 1)
                         for (t,) in outs)
            speeds[batch_size].append(tokens / elapsed)
            seconds[batch_size].append(elapsed)
            start = time.perf_counter()
            raw_tokens = raw_generate(backend.model, backend.tokenizer, convs, max_new_tokens)
            raw_speeds[batch_size].append(raw_tokens / (time.perf_counter() - start))
            print(json.dumps({"repeat": repeat, "batch_size": batch_size, "tokens_per_s": round(tokens / elapsed, 1),
                              "raw_greedy_tokens_per_s": round(raw_speeds[batch_size][-1], 1)}), flush=True)
    rows = [{"batch_size": b, "dtype": str(backend.dtype).replace("torch.", ""),
             "tokens_per_s": round(statistics.median(speeds[b]), 1), "runs": [round(v, 1) for v in speeds[b]],
             "seconds_per_batch": round(statistics.median(seconds[b]), 2),
             "raw_greedy_tokens_per_s": round(statistics.median(raw_speeds[b]), 1),
             "raw_greedy_runs": [round(v, 1) for v in raw_speeds[b]]} for b in batches]
    base = next((r["tokens_per_s"] for r in rows if r["batch_size"] == 8), rows[0]["tokens_per_s"])
    return {"rows": rows, "ratio_vs_bs8": {str(r["batch_size"]): round(r["tokens_per_s"] / base, 3) for r in rows},
            "temperature": 0.7, "max_new_tokens": max_new_tokens}


def load_average() -> list[float]:
    import os

    return [round(v, 2) for v in os.getloadavg()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/sampling.json"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    parser.add_argument("--batches", default="8,16,32,64", help="batch sizes of the sampling sweep")
    parser.add_argument("--batches-only", action="store_true", help="run only the batch sweep")
    parser.add_argument("--greedy-batches", default="1,8", help="batch sizes of part 1 (greedy, raw vs backend)")
    parser.add_argument("--greedy-only", action="store_true", help="run only part 1 (and the load time)")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    ensure_default_model()
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    greedy_batches = [int(b) for b in args.greedy_batches.split(",") if b.strip()]
    if args.batches_only:
        load_before = load_average()
        sweep = batch_sweep(args.device, batches, args.repeats, args.max_new_tokens)
        report = {"batch_sweep": sweep, "device": args.device, "threads": torch.get_num_threads(),
                  "load_average_before": load_before, "load_average_after": load_average(),
                  "versions": package_versions()}
        atomic_write_json(args.out, report)
        print(json.dumps({"ratio_vs_bs8": sweep["ratio_vs_bs8"]}))
        return
    load_times = []
    for _ in range(3):
        start = time.perf_counter()
        HFBackend(ModelConfig(device=args.device, dtype="fp32"))
        load_times.append(time.perf_counter() - start)
    results = []
    for dtype in ("fp32", "bf16"):
        backend = HFBackend(ModelConfig(device=args.device, dtype=dtype, batch_size=max(greedy_batches)))
        for batch_size in greedy_batches:
            convs = [[{"role": "user", "content": p}]
                     for p in (PROMPTS[:batch_size] if batch_size <= len(PROMPTS) else sweep_prompts(batch_size))]
            backend_generate(backend, convs, 8)  # warm-up
            for impl in ("raw_generate", "personalign"):
                speeds = []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    if impl == "raw_generate":
                        tokens = raw_generate(backend.model, backend.tokenizer, convs, args.max_new_tokens)
                    else:
                        tokens = backend_generate(backend, convs, args.max_new_tokens)
                    speeds.append(tokens / (time.perf_counter() - start))
                row = {"impl": impl, "dtype": dtype, "batch_size": batch_size,
                       "tokens_per_s": round(statistics.median(speeds), 1), "runs": [round(s, 1) for s in speeds]}
                results.append(row)
                print(json.dumps(row))
    ratios = {}
    for dtype in ("fp32", "bf16"):
        for batch_size in greedy_batches:
            ours, raw = (next(r["tokens_per_s"] for r in results if r["impl"] == impl and r["dtype"] == dtype
                              and r["batch_size"] == batch_size) for impl in ("personalign", "raw_generate"))
            ratios[f"{dtype}_bs{batch_size}"] = round(ours / raw, 3)
    sweep = None if args.greedy_only else batch_sweep(args.device, batches, args.repeats, args.max_new_tokens)
    report = {
        "results": results, "load_s": round(statistics.median(load_times), 3), "ratio_vs_raw": ratios,
        "batch_sweep": sweep, "load_average_after": load_average(),
        "max_new_tokens": args.max_new_tokens, "device": str(backend.device), "threads": torch.get_num_threads(),
        "versions": package_versions(),
    }
    atomic_write_json(args.out, report)
    print(json.dumps({"load_s": report["load_s"], "ratio_vs_raw": ratios}))


if __name__ == "__main__":
    main()
