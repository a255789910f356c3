"""Benchmark of the evaluation stack: authorship-judge validity per feature mix, and the quick author benchmark.

    python bench/authors.py judge --dataset cmcc                 # held-out AUC, all authors, 3 feature mixes
    python bench/authors.py run --dataset cmcc                   # `eval authors --quick`, timed
    python bench/authors.py collect RUN_DIR --seconds S          # record a finished run's numbers

Writes JSON into bench/results/. The baseline of the judge comparison is the char n-gram judge alone
(embedding weight 0), measured in the same invocation.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from personalign.io import atomic_write_json

RESULTS = Path(__file__).resolve().parent / "results"


def judge(dataset: str, weights: list[float], pool: int) -> dict:
    from personalign.evaluation.authorship import AuthorshipJudge
    from personalign.profiles.ditto_authors import authorship_pools

    pools = authorship_pools(dataset, max_per_author=pool)  # type: ignore[arg-type]
    results: dict = {"dataset": dataset, "authors": len(pools.train), "mixes": {}}
    for weight in weights:
        start = time.perf_counter()
        aucs = []
        for author, texts in pools.train.items():
            others = [t for a, ts in pools.train.items() if a != author for t in ts][:400]
            model = AuthorshipJudge(embedding_weight=weight, embedder=None if weight == 0 else "minilm")
            model.fit(texts, others)
            held_others = [t for a, ts in pools.heldout.items() if a != author for t in ts]
            aucs.append(model.evaluate(pools.heldout[author], held_others).auc)
        results["mixes"][str(weight)] = {
            "median_auc": statistics.median(aucs), "mean_auc": statistics.fmean(aucs), "min_auc": min(aucs),
            "n_below_0.65": sum(a < 0.65 for a in aucs), "seconds": round(time.perf_counter() - start, 1),
            "per_author": aucs,
        }
        print(weight, {k: v for k, v in results["mixes"][str(weight)].items() if k != "per_author"}, flush=True)
    base = results["mixes"].get("0.0")
    if base:
        for mix in results["mixes"].values():
            mix["median_auc_minus_chars_only"] = mix["median_auc"] - base["median_auc"]
    return results


def collect(run_dir: Path, seconds: float | None, tie_margin: float | None = None) -> dict:
    """Summarize a run dir from its outputs (finished or interrupted), with the run's tie margin unless given."""
    import yaml

    from personalign.evaluation.authors_benchmark import summarize
    from personalign.io import read_jsonl

    rows, metrics = read_jsonl(run_dir / "outputs.jsonl"), read_jsonl(run_dir / "metrics.jsonl")
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    margin = config.get("tie_margin", 0.0) if tie_margin is None else tie_margin
    methods = list(dict.fromkeys(r["method"] for r in rows))
    authors = sorted({r["author"] for r in rows})
    summary = summarize(rows, metrics, methods, n_boot=2000, tie_margin=margin) | {
        "dataset": config["dataset"], "authors": authors, "tie_margin": margin,
        "partial": not (run_dir / "summary.json").is_file()}
    env = json.loads((run_dir / "env.json").read_text())
    return {"run_dir": str(run_dir), "wall_seconds": seconds, "env": {k: env.get(k) for k in ("cpu_count", "device")},
            "summary": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    j = sub.add_parser("judge")
    j.add_argument("--dataset", default="cmcc")
    j.add_argument("--weights", default="0.0,0.3,1.0")
    j.add_argument("--pool", type=int, default=20)
    r = sub.add_parser("run")
    r.add_argument("--dataset", default="cmcc")
    r.add_argument("--methods", default=None)
    c = sub.add_parser("collect")
    c.add_argument("run_dir", type=Path)
    c.add_argument("--seconds", type=float, default=None)
    c.add_argument("--tie-margin", type=float, default=None, help="default: the run's own")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    if args.what == "judge":
        out = judge(args.dataset, [float(w) for w in args.weights.split(",")], args.pool)
        atomic_write_json(RESULTS / f"authors_judge_{args.dataset}.json", out)
    elif args.what == "run":
        from personalign.evaluation.authors_benchmark import AuthorsBenchConfig, run_authors_benchmark

        start = time.perf_counter()
        cfg = AuthorsBenchConfig(dataset=args.dataset, quick=True,
                                 methods=args.methods.split(",") if args.methods else None)
        run, _ = run_authors_benchmark(cfg, echo=print)
        out = collect(run.path, round(time.perf_counter() - start, 1))
        atomic_write_json(RESULTS / f"authors_quick_{args.dataset}.json", out)
    else:
        out = collect(args.run_dir, args.seconds, args.tie_margin)
        dataset = out["summary"].get("dataset", "x")
        atomic_write_json(RESULTS / f"authors_quick_{dataset}.json", out)


if __name__ == "__main__":
    main()
