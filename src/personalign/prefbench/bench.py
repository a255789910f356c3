"""`personalign bench`: run methods × data sets and judge them on accuracy, fairness, tax and adaptation.

Per data set the run folder holds `config.yaml`, `env.json`, `metrics.jsonl` (one row per method),
`characterization.json`, `methods/<name>.json` (each finished method, with a fingerprint of the config that
produced it, so a rerun skips it), `results.json`, `table.md` and the plots. Several data sets get one
sub-folder each plus a combined `table.md` at the top.

Every method trains on the train split plus, with `general`, HH helpful/harmless pairs as one more
pseudo-user (the shared component's general signal, disjoint from the tax sets); it is scored on the test
split for the real users only. The tax of a method is its drop from vanilla's tax-set accuracy.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from personalign.prefbench.characterize import characterize_splits
from personalign.prefbench.config import BenchConfig
from personalign.prefbench.data import load_prefdata
from personalign.prefbench.evaluate import (
    adaptation_curve,
    by_category,
    margin_tax,
    per_user_accuracy,
    sample_per_user,
    summarize,
    tax_drop,
    tax_scores,
)
from personalign.prefbench.features import Featurized, TaxFeatures, featurize, featurize_general, featurize_tax
from personalign.prefbench.methods import METHODS, PairSet, make_method, options_field
from personalign.runs import RunDir, seed_everything

Log = Callable[[str], None]


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Train small heads single-threaded: their ops are too small to split, and with other work on the
    machine extra threads mostly spin (measured ~10× slower with 2 threads under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Progress:
    """Rich progress bars when a console is attached, silent otherwise (tests, library use)."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._progress: Any = None

    def __enter__(self) -> Progress:
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

            from personalign.progress import Progress as RichProgress

            self._progress = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                          TimeElapsedColumn(), transient=False)
            self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def task(self, description: str, total: int) -> Callable[[int], None]:
        if self._progress is None:
            return lambda done: None
        task_id = self._progress.add_task(description, total=total)
        return lambda done: self._progress.update(task_id, completed=done)

    def log(self, message: str) -> None:
        if self._progress is not None:
            self._progress.console.log(message)


def _encoder(backbone: str, dtype: str) -> Any:
    from personalign.backends.embedder import get_embedder

    return get_embedder(backbone, dtype)


Shared = tuple[Featurized, TaxFeatures | None, PairSet | None, list[str]]


def run_method(name: str, cfg: BenchConfig, shared: Shared, progress: Progress) -> dict[str, Any]:
    """Train `name` on all users (plus the general pseudo-user), score it, and run its adaptation folds."""
    feats, tax, general, minority = shared
    options = getattr(cfg.options, options_field(name))
    make = lambda: make_method(name, options, cfg.train, cfg.seed)  # noqa: E731 - a factory per fold
    train, test = feats.splits["train"], feats.splits["test"]
    n_users = len(feats.users)
    dims = feats.dimensions
    fit_pairs, n_fit = train, n_users
    if general is not None:
        fit_pairs, n_fit = PairSet.concat([train, general.as_user(n_users)]), n_users + 1
        if dims is not None:
            dims = dims.with_user(np.full(len(dims.names), 1 / len(dims.names)))
    slow = METHODS[name].slow
    timing: dict[str, float] = {}
    start = time.perf_counter()
    method = make().fit(fit_pairs, n_fit, dims)
    timing["fit_s"] = time.perf_counter() - start
    if slow:
        test = sample_per_user(test, cfg.slow_eval_pairs, cfg.seed)
    per_user = per_user_accuracy(method, test, feats.users)
    result: dict[str, Any] = {**summarize(per_user, minority), "per_user": per_user,
                              "n_test_pairs": len(test), "skipped": []}
    if tax is not None and not slow:
        start = time.perf_counter()
        scores = tax_scores(method, tax.pairs, n_users)
        result["tax"] = by_category(scores, tax.categories)
        result["tax_scores"] = scores.round(4).tolist()
        timing["tax_s"] = time.perf_counter() - start
    elif tax is not None:
        result["skipped"].append("tax")
    if cfg.adaptation and not slow:
        start = time.perf_counter()
        tick = progress.task(f"  {name}: adaptation folds", cfg.adapt_folds)
        adapt = adaptation_curve(make, train, feats.splits["test"], n_users, cfg.ks, cfg.adapt_folds, cfg.seed,
                                 on_fold=lambda done, _total: tick(done), dimensions=feats.dimensions,
                                 general=general)
        result["adaptation"] = adapt["curve"]
        result["adaptation_detail"] = adapt["detail"]
        timing["adaptation_s"] = time.perf_counter() - start
    elif cfg.adaptation:
        result["skipped"].append("adaptation")
    result["timing"] = timing
    return result


def _timed_run(name: str, cfg: BenchConfig, shared: Shared, progress: Progress) -> dict[str, Any]:
    start = time.perf_counter()
    seed_everything(cfg.seed)
    result = run_method(name, cfg, shared, progress)
    result["timing"]["total_s"] = time.perf_counter() - start
    return result


# Longest first, so two workers finish together (measured on DSP and the synthetic users).
COST_ORDER = ("rag", "gpo", "gpo-bt", "vpl", "lora", "soups", "rm-soup", "individual", "personalized", "conditional",
              "vanilla", "rag-vote")
_WORKER: dict[str, Any] = {}


def _worker_init(cfg_data: dict[str, Any], shared: Shared, threads: int) -> None:
    torch.set_num_threads(threads)
    _WORKER["cfg"] = BenchConfig.model_validate(cfg_data)
    _WORKER["shared"] = shared


def _worker_run(name: str) -> dict[str, Any]:
    return _timed_run(name, _WORKER["cfg"], _WORKER["shared"], Progress(False))


def run_parallel(cfg: BenchConfig, names: list[str], jobs: int, shared: Shared,
                 finish: Callable[[str, dict[str, Any]], None], progress: Progress, dataset: str) -> None:
    """Methods in `jobs` worker processes: each head trains single-threaded, so two cores run two methods.
    Workers are spawned (not forked: a fork after torch started its thread pool can hang) and get the
    embeddings once, at start-up."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    order = sorted(names, key=lambda n: COST_ORDER.index(n) if n in COST_ORDER else -1)
    tick = progress.task(f"{dataset}: methods ({jobs} workers)", len(order))
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_worker_init,
                             initargs=(cfg.to_dict(), shared, cfg.torch_threads)) as pool:
        futures = {pool.submit(_worker_run, name): name for name in order}
        for done, future in enumerate(as_completed(futures), start=1):
            finish(futures[future], future.result())
            tick(done)


def run_dataset(cfg: BenchConfig, dataset: str, run: RunDir, progress: Progress) -> dict[str, Any]:
    """One data set: load, characterize, embed, then every method (skipping ones already done)."""
    from personalign.io import atomic_write_json

    seed_everything(cfg.seed)
    timing: dict[str, float] = {}
    start = time.perf_counter()
    data = load_prefdata(dataset, cfg.data_dir, cfg.data_path, cfg.synthetic.to_dict(), cfg.max_train_per_user,
                         cfg.max_test_per_user, cfg.seed)
    chars = characterize_splits(data)
    run.write_json("characterization.json", chars)
    timing["load_s"] = time.perf_counter() - start

    embedder = _encoder(cfg.backbone, cfg.embedder_dtype)
    hits0, misses0 = embedder.cache_hits, embedder.cache_misses
    start = time.perf_counter()
    feats = featurize(data, embedder.encode, max_prompt_chars=cfg.max_prompt_chars,
                      progress=_bar(progress, f"{dataset}: embedding texts"), seed=cfg.seed)
    tax, tax_pairs, general = None, [], None
    if cfg.tax:
        from personalign.prefbench.data.tax import load_tax_sets

        tax_pairs = load_tax_sets(cfg.data_dir, cfg.tax_max_per_source, cfg.seed)
        tax = featurize_tax(tax_pairs, embedder.encode, cfg.max_prompt_chars,
                            progress=_bar(progress, f"{dataset}: embedding tax sets"), seed=cfg.seed)
    general_info: dict[str, Any] = {"enabled": cfg.general}
    if cfg.general:
        from personalign.prefbench.data.general import disjoint_from, load_general

        general_pairs, dropped = disjoint_from(load_general(cfg.data_dir, cfg.general_max_pairs, cfg.seed), tax_pairs)
        general = featurize_general(general_pairs, embedder.encode, cfg.max_prompt_chars)
        general_info.update({"n_pairs": len(general_pairs), "dropped_overlapping_tax": dropped,
                             "sources": sorted({p.source for p in general_pairs})})
    timing["embed_s"] = time.perf_counter() - start
    cache = {"hits": embedder.cache_hits - hits0, "misses": embedder.cache_misses - misses0}

    methods_dir = run.path / "methods"
    results: dict[str, Any] = {}
    pending: list[str] = []
    skipped: dict[str, str] = {}
    for name in cfg.method_list():
        if METHODS[name].needs_dimensions and feats.dimensions is None:
            skipped[name] = "the data set declares no preference dimensions"
            progress.log(f"{dataset}/{name}: skipped ({skipped[name]})")
            continue
        cached = methods_dir / f"{name}.json"
        if cfg.resume and cached.is_file():
            previous = json.loads(cached.read_text(encoding="utf-8"))
            if previous.get("fingerprint") == cfg.fingerprint(dataset, name):
                results[name] = previous["result"]
                progress.log(f"{dataset}/{name}: reusing finished result ({cached})")
                continue
        pending.append(name)

    def finish(name: str, result: dict[str, Any]) -> None:
        atomic_write_json(methods_dir / f"{name}.json", {"fingerprint": cfg.fingerprint(dataset, name),
                                                         "result": result})
        results[name] = result
        run.log_metrics({"dataset": dataset, "method": name, "mean_acc": result["mean_acc"],
                         "worst_acc": result["worst_acc"], "minority_acc": result["minority_acc"],
                         **{f"tax_{k}": v for k, v in result.get("tax", {}).items()},
                         **{f"adapt_{k}": v for k, v in result.get("adaptation", {}).items()},
                         "seconds": result["timing"]["total_s"]})
        progress.log(f"{dataset}/{name}: mean {result['mean_acc']:.3f}, worst {result['worst_acc']:.3f} "
                     f"({result['timing']['total_s']:.1f} s)")

    shared: Shared = (feats, tax, general, chars["minority_users"])
    jobs = min(cfg.jobs, len(pending))
    if jobs > 1:
        run_parallel(cfg, pending, jobs, shared, finish, progress, dataset)
    else:
        with torch_threads(cfg.torch_threads):
            for name in pending:
                progress.log(f"{dataset}/{name}: training")
                finish(name, _timed_run(name, cfg, shared, progress))
    results = {name: results[name] for name in cfg.method_list() if name in results}
    baselines: dict[str, Any] = dict(chars["baselines"])
    if tax is not None:
        baselines["untrained_tax"] = margin_tax(tax.untrained_margins, tax.categories)
        baselines["untrained_tax_n"] = {str(c): int((tax.categories == c).sum())
                                        for c in dict.fromkeys(tax.categories.tolist())}
        base = results.get("vanilla", {}).get("tax_scores")
        for r in results.values():
            if base is not None and "tax_scores" in r:
                r["tax_drop"] = tax_drop(np.array(base), np.array(r["tax_scores"]), tax.categories,
                                         cfg.tax_bootstrap, cfg.seed)
    return {
        "dataset": dataset,
        "methods": results,
        "skipped_methods": skipped,
        "general": general_info,
        "characterization": {k: chars[k] for k in ("train", "test")},
        "users": feats.users,
        "minority_users": chars["minority_users"],
        "n_pairs": {split: len(p) for split, p in feats.splits.items()},
        "n_texts": feats.n_texts,
        "baselines": baselines,
        "embedding_cache": cache,
        "timing": timing,
    }


def _bar(progress: Progress, description: str) -> Callable[[int, int], None]:
    state: dict[str, Callable[[int], None]] = {}

    def update(done: int, total: int) -> None:
        if "tick" not in state:
            state["tick"] = progress.task(description, total)
        state["tick"](done)

    return update


def run_bench(cfg: BenchConfig, show_progress: bool = True) -> dict[str, Any]:
    """Run the whole benchmark for `cfg`; returns {dataset: results} and writes everything under cfg.out."""
    from personalign.prefbench.report import write_outputs, write_summary

    requested = cfg
    cfg = cfg.effective()
    root = Path(cfg.out) if cfg.out else None
    all_results: dict[str, Any] = {}
    with Progress(show_progress) as progress:
        for dataset in cfg.dataset:
            path = None if root is None else root if len(cfg.dataset) == 1 else root / Path(dataset).stem
            # An interrupted multi-set run may not have reached this set yet: nothing there to resume.
            resume = cfg.resume and path is not None and path.is_dir() and any(path.iterdir())
            # Every finished method is keyed by a fingerprint of its settings (reused only when it matches), so a
            # resumed bench may change settings: it redoes exactly the methods they touch, never reuses stale ones.
            run = RunDir.open(path, "bench", requested, resume=resume, name=f"prefbench-{Path(dataset).stem}",
                              ignore=type(requested).model_fields)
            run.write_env(cfg.seed, device="cpu", effective_config=cfg.to_dict(), torch_threads=cfg.torch_threads)
            start = time.perf_counter()
            results = run_dataset(cfg, dataset, run, progress)
            results["timing"]["wall_s"] = time.perf_counter() - start
            write_outputs(run, results, plots=cfg.plots)
            all_results[dataset] = {"run_dir": str(run.path), **results}
    if root is not None and len(cfg.dataset) > 1:
        write_summary(root, all_results)
    return all_results

