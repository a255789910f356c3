"""Benchmark prefbench's speed and results: embedding throughput (cold/warm cache) and the wall time of
`personalign bench` on DSP and the synthetic users, cold (empty cache) and warm (cached embeddings; every
method retrained) and resumed (finished methods reused). Writes one JSON file (default
bench/results/prefbench.json) with timings, machine load and each run's results table.

    .venv/bin/python bench/prefbench.py                 # full: ≈ 15–30 min on 2 cores
    .venv/bin/python bench/prefbench.py --quick         # smoke: --quick bench runs
    .venv/bin/python bench/prefbench.py --phases cold   # results only (no warm-cache / resume timings)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PERSONALIGN = str(Path(sys.executable).with_name("personalign"))


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def throughput(cache: Path, n_long: int, n_short: int) -> dict[str, Any]:
    """texts/s of the Embedder on DSP prompt+response texts and on short synthetic responses."""
    os.environ["PERSONALIGN_CACHE"] = str(cache)
    from personalign.backends.embedder import Embedder
    from personalign.prefbench.data.dsp import load_dsp
    from personalign.prefbench.data.synthetic import make_synthetic
    from personalign.prefbench.features import pair_text

    dsp = load_dsp()
    long_texts = list(dict.fromkeys(pair_text(p.prompt, p.chosen) for p in dsp.pairs))[:n_long]
    synthetic = make_synthetic()
    short_texts = list(dict.fromkeys(p.chosen for p in synthetic.pairs))[:n_short]
    # One-line questions (~8 words): the regime where MiniLM's throughput is usually quoted.
    sentences = list(dict.fromkeys(p.prompt for p in synthetic.pairs))
    sentences = [f"{s} ({i})" for i in range(4) for s in sentences][:n_short]
    out: dict[str, Any] = {"load_before": load()}
    cpu0 = time.process_time()
    # fp32 (the default, batch-invariant) against bf16 (opt-in, faster on CPUs with native bf16 matmuls).
    for dtype in ("fp32", "bf16"):
        emb = Embedder("minilm", cache_root=cache / "embeddings", dtype=dtype)
        start = time.perf_counter()
        emb.encode(["warm up the model"])
        row: dict[str, Any] = {"dtype": str(emb.torch_dtype).removeprefix("torch."), "batch_size": emb.batch_size,
                               "model_load_s": round(time.perf_counter() - start, 2)}
        for name, texts in (("dsp_prompt_response", long_texts), ("synthetic_response", short_texts),
                            ("one_line_question", sentences)):
            words = sum(len(t.split()) for t in texts) / len(texts)
            start, cpu_start = time.perf_counter(), time.process_time()
            emb.encode(texts)
            cold, cold_cpu = time.perf_counter() - start, time.process_time() - cpu_start
            start = time.perf_counter()
            emb.encode(texts)
            warm = time.perf_counter() - start
            row[name] = {"n_texts": len(texts), "mean_words": round(words, 1),
                         "cold_texts_per_s": round(len(texts) / cold, 1),
                         "warm_texts_per_s": round(len(texts) / warm, 1),
                         # texts per CPU-second; × 2 is the rate with both cores to itself
                         "cold_texts_per_cpu_s": round(len(texts) / cold_cpu, 1)}
        out[dtype] = row
    out["load_after"] = load()
    out["cpu_s_total"] = round(time.process_time() - cpu0, 1)
    return out


def run_cli(args: list[str], cache: Path) -> dict[str, Any]:
    env = {**os.environ, "PERSONALIGN_CACHE": str(cache)}
    before = load()
    # CPU seconds of the child as well as wall time: on a shared machine the wall time depends on the
    # other jobs, the CPU time much less.
    usage0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run([PERSONALIGN, *args], cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    usage1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(f"personalign {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return {"args": args, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "load_before": before,
            "load_after": load()}


def results_of(out: Path) -> dict[str, Any]:
    res = json.loads((out / "results.json").read_text(encoding="utf-8"))
    keys = ("mean_acc", "worst_acc", "minority_acc", "per_user", "n_test_pairs", "skipped", "tax", "tax_drop",
            "adaptation")
    slim = {name: {k: r.get(k) for k in keys} | {"seconds": round(r["timing"].get("total_s", 0.0), 1)}
            for name, r in res["methods"].items()}
    chars = {split: {k: c[k] for k in ("disagreement", "consistency", "minority_users", "mean_room", "n_pairs")}
             for split, c in res.get("characterization", {}).items()}
    return {"methods": slim, "baselines": res["baselines"], "minority_users": res["minority_users"],
            "characterization": chars, "general": res.get("general"), "skipped_methods": res.get("skipped_methods"),
            "n_pairs": res["n_pairs"], "n_texts": res["n_texts"], "timing": res["timing"],
            "embedding_cache": res["embedding_cache"], "table": (out / "table.md").read_text(encoding="utf-8")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "prefbench.json"))
    parser.add_argument("--datasets", default="dsp,synthetic")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--n-long", type=int, default=512)
    parser.add_argument("--n-short", type=int, default=960)
    parser.add_argument("--keep", default=None, help="keep the run folders here (default: a temp dir)")
    parser.add_argument("--throughput-only", action="store_true", help="measure the embedder only")
    parser.add_argument("--reuse-throughput", action="store_true",
                        help="copy the embedder throughput section from the existing --out file (marked as such) "
                             "instead of measuring it again")
    parser.add_argument("--cache", default=None,
                        help="embedding cache root to use (default: an empty one in the work folder, so the "
                             "first phase is cold); with a filled cache run --phases warm,resumed")
    parser.add_argument("--bench-args", default="",
                        help="extra `personalign bench` flags for every run, e.g. \"--set tax_max_per_source=30\"")
    parser.add_argument("--phases", default="cold,warm,resumed",
                        help="bench runs to time: cold (empty cache), warm (cached embeddings), resumed; or "
                             "collected (read finished runs under --keep/runs, run nothing)")
    args = parser.parse_args()
    datasets = args.datasets.split(",")
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="prefbench-bench-"))
    previous = Path(args.out)
    if args.reuse_throughput and previous.is_file():
        measured = {**json.loads(previous.read_text(encoding="utf-8"))["throughput"], "reused_from_previous_run": True}
    else:
        measured = throughput(work / "cache_throughput", args.n_long, args.n_short)
    report: dict[str, Any] = {
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "quick": args.quick,
        "throughput": measured,
        "runs": {},
    }
    print(json.dumps(report["throughput"], indent=1), flush=True)
    if args.throughput_only:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        return
    cache = Path(args.cache) if args.cache else work / "cache_bench"
    report["embedding_cache_root"] = "given (--cache)" if args.cache else "empty at start"
    extra = (["--quick"] if args.quick else []) + shlex.split(args.bench_args)
    report["bench_args"] = extra
    phases = [ph for ph in (("cold", []), ("warm", []), ("resumed", ["--resume"]), ("collected", []))
              if ph[0] in args.phases.split(",")]
    for phase, flags in phases:
        total = 0.0
        for d in datasets:
            out = work / "runs" / d
            if phase == "collected":
                # Results of finished `personalign bench --dataset d --methods all --out <work>/runs/d <bench-args>`
                # runs made beforehand (e.g. in parallel on a loaded machine): read, not rerun or timed.
                report["runs"].setdefault(d, {})["collected_results"] = results_of(out)
                continue
            if phase != "resumed":
                shutil.rmtree(out, ignore_errors=True)  # a fresh run: `bench` writes only into a new folder
            timing = run_cli(["bench", "--dataset", d, "--methods", "all", "--out", str(out), *flags, *extra], cache)
            total += timing["wall_s"]
            entry = report["runs"].setdefault(d, {})
            entry[phase] = timing
            entry[f"{phase}_results"] = results_of(out)
            print(f"{phase} {d}: {timing['wall_s']} s (load {timing['load_before']} → {timing['load_after']})",
                  flush=True)
        if phase != "collected":
            report.setdefault("total_wall_s", {})[phase] = round(total, 1)
    first = phases[0][0]
    from personalign.prefbench.anchors import headline_anchors, load_anchors
    from personalign.prefbench.report import summary_table

    report["summary_table"] = summary_table({d: report["runs"][d][f"{first}_results"] for d in datasets})
    anchors = load_anchors()
    report["anchors"] = headline_anchors(anchors)
    rag = [r["mean_acc"] for r in anchors if r["method"] == "rag" and r["mean_acc"]]
    report["anchor_rag_range"] = [min(rag), max(rag)] if rag else None
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
