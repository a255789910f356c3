"""The DITTO author benchmark: personalize to each CMCC/CCAT50 author, generate for held-out prompts, and
score every method with every evaluator; report win rates against `base` and `prompt` (DITTO's table).

Per author: profile from the train demonstrations (`profiles.ditto_authors`), an authorship judge fitted
on that author's pool vs other authors (its held-out AUC is printed every time), then each method is fitted
and generates for the author's test prompts. Outputs carry their scores, so a rerun of the same run dir
skips every (author, method) already done (resume). Device and model come from `ModelConfig`, so the same
command runs on a GPU unchanged. No method is scored on a test prompt or text it trained on, and no judge on
a text it trained on (`personalign.splits`): either is refused with one line.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
from pydantic import Field

from personalign.backends.base import GenerationBackend
from personalign.backends.registry import build_backend
from personalign.config import Config, ModelConfig, SamplingConfig
from personalign.errors import PersonalignError
from personalign.evaluation.authorship import AuthorshipJudge, fit_author_judge
from personalign.evaluation.evaluators import (
    AuthorshipEvaluator,
    Evaluator,
    JudgeEvaluator,
    ReferenceCosineEvaluator,
    RougeLEvaluator,
    paired,
    per_prompt_scores,
    score_rows,
)
from personalign.evaluation.winrate import pairwise_winrate, winrate_matrix
from personalign.io import atomic_write_text
from personalign.judges.rules import count_words
from personalign.methods.base import Personalizer, available_methods, build_personalizer, method_class
from personalign.methods.prompted import reuse_trained
from personalign.methods.spec import PROMPT_SUFFIX
from personalign.profiles.ditto_authors import author_ids, author_profile, authorship_pools
from personalign.profiles.schema import Profile
from personalign.runs import RunDir, seed_everything
from personalign.splits import assert_disjoint

BENCH_METHODS = ("base", "prompt", "prompt-rag", "sft", "sft+prompt", "ditto", "ditto+prompt")
QUICK_AUTHORS = (0, 1, 2)
QUICK_MAX_NEW_TOKENS = 128
PRIMARY = "authorship"
BASELINES = ("base", "prompt")


class PeopleBenchConfig(Config):
    """What every per-person benchmark shares (DITTO's author sets, Enron): methods, model, sampling, judge, stats."""

    methods: list[str] | None = Field(None, description="None = each available of " + ",".join(BENCH_METHODS))
    quick: bool = Field(False, description="3 people, short generations, each method's quick settings")
    n_prompts: int | None = Field(None, ge=1, description="first K test prompts per person; None = all")
    data_dir: str | None = Field(None, description="folder of the data sets ($PERSONALIGN_DATA, ../shared/datasets)")
    out: str | None = Field(None, description="the run dir to write (default: runs/<name>-<UTC time>)")
    name: str | None = Field(None, description="prefix of the default run dir's name")
    resume: bool = Field(False, description="continue the run in `out`: finished (person, method) pairs are reused")
    model: ModelConfig = Field(default_factory=ModelConfig)
    sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig(max_new_tokens=512))
    method_configs: dict[str, dict[str, Any]] = Field(default_factory=dict, description="per-method config fields")
    judge_pool: int = Field(20, ge=2, description="max train/held-out texts per person for the authorship judge")
    judge_negatives: int = Field(400, ge=2, description="max other-person texts the judge trains on")
    judge_embedding_weight: float = Field(0.3, ge=0.0, description="MiniLM weight beside char n-grams (0 = off)")
    llm_judge: str | None = Field(None, description="LLM judge model (off by default: a 135M judge proves nothing)")
    n_boot: int = Field(2000, ge=100, description="bootstrap resamples (over people) for the CIs")
    # Every evaluator here lies on a 0-1 scale; without a margin P(author) = 2e-6 "beats" 1e-6.
    tie_margin: float = Field(0.01, ge=0.0, description="score gap at or below which a prompt is a tie")

    def resolved_methods(self) -> list[str]:
        if self.methods:
            for name in self.methods:
                method_class(name)  # unknown or not-installed method: one clear line, before any work
            return list(self.methods)
        return [m for m in BENCH_METHODS if m in available_methods()]

    def resolved_sampling(self) -> SamplingConfig:
        if self.quick and self.sampling.max_new_tokens > QUICK_MAX_NEW_TOKENS:
            return self.sampling.model_copy(update={"max_new_tokens": QUICK_MAX_NEW_TOKENS})
        return self.sampling


class AuthorsBenchConfig(PeopleBenchConfig):
    """Resolved config of one author-benchmark run (written to the run dir as config.yaml)."""

    dataset: Literal["cmcc", "ccat50"] = "cmcc"
    authors: list[int] | None = Field(None, description="author ids; None = all (3 with quick)")

    def resolved_authors(self) -> list[int]:
        valid = author_ids(self.dataset, self.data_dir)
        if self.authors is None:
            return list(QUICK_AUTHORS) if self.quick else valid
        bad = [a for a in self.authors if a not in valid]
        if bad:
            raise PersonalignError(f"--authors: {bad} not in {self.dataset} (valid ids: {valid[0]}..{valid[-1]})")
        return list(self.authors)


def _fit(
    name: str, cfg: PeopleBenchConfig, profile: Profile, shared: Callable[[], GenerationBackend], run: RunDir,
    author: int,
) -> Personalizer:
    cls = method_class(name)
    method_config = dict(cls.quick_overrides() if cfg.quick else {})
    method_config.update(cfg.method_configs.get(name, {}))
    # Trainable methods change weights: a fresh backend per (author, method) keeps the others untouched.
    backend = build_backend(cfg.model) if cls.trainable else shared()
    personalizer = build_personalizer(name, backend, method_config)
    sub = None
    if cls.trainable:
        sub = RunDir(run.path / f"author-{author}" / "methods" / name)
        sub.write_config({"method": name, "method_config": personalizer.config.to_dict(), "model": cfg.model.to_dict()})
        sub.write_env(cfg.sampling.seed, device=str(getattr(backend, "device", "")))
    personalizer.fit(profile, sub)
    if personalizer.profile is None:
        personalizer.profile = profile
    return personalizer


def evaluators_for(cfg: PeopleBenchConfig, judge: AuthorshipJudge, profile: Profile,
                llm_backend: GenerationBackend | None) -> list[Evaluator]:
    evaluators: list[Evaluator] = [AuthorshipEvaluator(judge), ReferenceCosineEvaluator(), RougeLEvaluator()]
    if llm_backend is not None:
        from personalign.judges.llm import LLMJudge

        evaluators.append(JudgeEvaluator(LLMJudge(llm_backend), profile, name="llm_judge"))
    return evaluators


def run_authors_benchmark(
    cfg: AuthorsBenchConfig, progress: bool = True, echo: Callable[[str], None] | None = None
) -> tuple[RunDir, dict[str, Any]]:
    """Run (or resume) the benchmark; returns the run dir and the summary written to summary.json."""
    say = echo or (lambda _msg: None)
    methods = cfg.resolved_methods()
    authors = cfg.resolved_authors()
    sampling = cfg.resolved_sampling()
    if not methods:
        raise PersonalignError("--methods: no method to run; pass e.g. --methods base,prompt")
    run = RunDir.open(cfg.out, "eval authors", cfg, resume=cfg.resume, name=cfg.name or f"authors-{cfg.dataset}")
    run.write_env(sampling.seed, device=None if cfg.model.device == "auto" else cfg.model.device, methods=methods,
                  authors=authors)
    seed_everything(sampling.seed)
    pools = authorship_pools(cfg.dataset, cfg.data_dir, max_per_author=cfg.judge_pool, seed=sampling.seed)
    llm_backend = build_backend(ModelConfig(model=cfg.llm_judge, device=cfg.model.device)) if cfg.llm_judge else None

    def prepare(author: int) -> tuple[Profile, AuthorshipJudge, list[Evaluator]]:
        profile = author_profile(cfg.dataset, author, cfg.data_dir, seed=sampling.seed)
        judge = fit_author_judge(author, pools.train, pools.heldout, cfg.judge_negatives, sampling.seed,
                                 embedder="minilm" if cfg.judge_embedding_weight > 0 else None,
                                 embedding_weight=cfg.judge_embedding_weight)
        return profile, judge, evaluators_for(cfg, judge, profile, llm_backend)

    run_people(cfg, run, authors, methods, sampling, prepare, progress, say)
    summary = finish(run, methods, cfg.n_boot, cfg.tie_margin, sampling.seed,
                     {"dataset": cfg.dataset, "authors": authors, "quick": cfg.quick})
    return run, summary


def finish(run: RunDir, methods: list[str], n_boot: int, tie_margin: float, seed: int,
           extra: dict[str, Any]) -> dict[str, Any]:
    """Summarize the run's scored outputs, log each method's summary once, write summary.json and table.md."""
    summary = summarize(run.outputs, run.metrics, methods, n_boot, tie_margin, seed) | extra
    for method, stats in summary["methods"].items():
        if not any(r.get("kind") == "method_summary" and r.get("method") == method for r in run.metrics):
            run.log_metrics({"kind": "method_summary", "method": method, **stats})
    run.write_json("summary.json", summary)
    atomic_write_text(run.path / "table.md", markdown_table(summary))
    run.mark_finished()
    run.finish()
    return summary


def run_people(
    cfg: PeopleBenchConfig, run: RunDir, people: list[int], methods: list[str], sampling: SamplingConfig,
    prepare: Callable[[int], tuple[Profile, AuthorshipJudge, list[Evaluator]]], progress: bool = True,
    say: Callable[[str], None] = lambda _msg: None,
) -> None:
    """Per person: profile, judge (validity logged once) and evaluators from `prepare`, then each method is
    fitted, generates for the profile's eval prompts and is scored; (person, method) pairs already in the run
    dir are skipped (resume). The author and Enron benchmarks share this loop."""
    done = {(row.get("author"), row["method"]) for row in run.outputs}
    logged_validity = {row["author"] for row in run.metrics if row.get("kind") == "judge_validity"}
    backend: GenerationBackend | None = None

    def shared() -> GenerationBackend:
        nonlocal backend
        if backend is None:
            backend = build_backend(cfg.model)
        return backend

    for author in people:
        fitted: dict[str, Personalizer] = {}  # this person's trained methods: `X+prompt` reuses `X`'s adapter
        profile, judge, evaluators = prepare(author)
        eval_prompts = profile.eval_prompts[: cfg.n_prompts]
        assert judge.validity is not None
        references = [p.reference for p in eval_prompts if p.reference]
        # The judge scores generations against the author's held-out texts: it must never have trained on them.
        assert_disjoint(judge.training_data, [], references, who=f"authorship judge of author {author}")
        say(judge.validity.line(f"author {author} judge"))
        if author not in logged_validity:
            run.log_metrics({"kind": "judge_validity", "author": author, **judge.validity.as_dict()})
        for name in methods:
            if (author, name) in done:
                say(f"author {author}: {name} done in the earlier run, reused")
                continue
            start = time.perf_counter()
            say(f"author {author}: {name} on {len(eval_prompts)} prompts")
            personalizer = (reuse_trained(name, fitted, cfg.method_configs)
                            or _fit(name, cfg, profile, shared, run, author))
            if personalizer.trainable and name + PROMPT_SUFFIX in methods:
                fitted[name] = personalizer  # kept (a model copy) only for the `+prompt` method that reuses it
            personalizer.assert_not_trained_on([p.prompt for p in eval_prompts], references,
                                               who=f"method {name} (author {author})")
            samples = personalizer.generate([p.prompt for p in eval_prompts], sampling, progress=progress)
            rows = [
                {"author": author, "prompt": p.prompt, "reference": p.reference, "method": name, "sample": i,
                 "seed": sampling.seed, "output": out}
                for p, outs in zip(eval_prompts, samples, strict=True) for i, out in enumerate(outs)
            ]
            score_rows(rows, evaluators)
            run.add_outputs(rows)
            run.log_metrics({"kind": "author_method", "author": author, "method": name,
                             **_means(rows), "seconds": round(time.perf_counter() - start, 2)})
            del personalizer
        fitted.clear()  # a trained copy of the model per (person, method): free them before the next person


def _means(rows: list[dict[str, Any]]) -> dict[str, float]:
    out: dict[str, float] = {}
    names = sorted({k for r in rows for k in (r.get("scores") or {})})
    for name in names:
        values = [r["scores"][name] for r in rows if r["scores"].get(name) is not None]
        if values:
            out[name] = float(np.mean(values))
    out["mean_words"] = float(np.mean([count_words(r["output"]) for r in rows])) if rows else float("nan")
    return out


def summarize(
    rows: list[dict[str, Any]], metrics: list[dict[str, Any]], methods: list[str], n_boot: int = 2000,
    tie_margin: float = 0.0, seed: int = 0,
) -> dict[str, Any]:
    """Win rates vs base/prompt per evaluator (CIs resample authors), the full matrix, per-author breakdown."""
    rows = [{**row, "item": f"{row.get('author')}|{row['prompt']}"} for row in rows]  # copies: run rows stay as written
    evaluators = sorted({k for r in rows for k in (r.get("scores") or {})})
    present = [m for m in methods if any(r["method"] == m for r in rows)]
    summary: dict[str, Any] = {"evaluators": evaluators, "primary": PRIMARY, "methods": {}, "vs": {}, "matrix": {},
                               "per_author": {}, "judge": {}}
    for method in present:
        summary["methods"][method] = _means([r for r in rows if r["method"] == method])
    for evaluator in evaluators:
        per = per_prompt_scores(rows, evaluator, key="item")
        summary["vs"][evaluator] = {}
        for baseline in BASELINES:
            if baseline not in per:
                continue
            for method in present:
                keys, a, b = paired(per, method, baseline)
                groups = [k.split("|", 1)[0] for k in keys]
                wr = pairwise_winrate(a, b, tie_margin, n_boot, seed, groups)
                summary["vs"][evaluator].setdefault(method, {})[baseline] = wr.as_dict()
        common = sorted(set.intersection(*(set(per.get(m, {})) for m in present))) if present else []
        if common and all(m in per for m in present):
            groups = [k.split("|", 1)[0] for k in common]
            matrix = winrate_matrix({m: [per[m][k] for k in common] for m in present}, tie_margin, n_boot, seed,
                                    groups)
            summary["matrix"][evaluator] = {a: {b: w.rate for b, w in row.items()} for a, row in matrix.items()}
    validity = {int(r["author"]): r for r in metrics if r.get("kind") == "judge_validity"}
    per_primary = per_prompt_scores(rows, PRIMARY, key="item")
    for author in sorted({int(r["author"]) for r in rows}):
        entry: dict[str, Any] = {"judge_auc": validity.get(author, {}).get("auc")}
        for method in present:
            mine = [r for r in rows if r["method"] == method and int(r["author"]) == author]
            entry.setdefault("mean", {})[method] = _means(mine).get(PRIMARY)
            for baseline in BASELINES:
                if baseline in per_primary and method in per_primary:
                    keys, a, b = paired(per_primary, method, baseline)
                    sel = [i for i, k in enumerate(keys) if k.split("|", 1)[0] == str(author)]
                    if sel:
                        wr = pairwise_winrate([a[i] for i in sel], [b[i] for i in sel], tie_margin, n_boot=100)
                        entry.setdefault(f"vs_{baseline}", {})[method] = wr.rate
        summary["per_author"][str(author)] = entry
    aucs = [v["auc"] for v in validity.values()]
    if aucs:
        summary["judge"] = {"mean_auc": float(np.mean(aucs)), "min_auc": float(np.min(aucs)),
                            "n_authors": len(aucs), "n_below_0.65": int(sum(a < 0.65 for a in aucs))}
    return summary


def validity_line(summary: dict[str, Any]) -> str:
    judge = summary.get("judge") or {}
    if not judge:
        return "authorship judge: no validity measured"
    return (f"authorship judge validity: mean held-out ROC-AUC {judge['mean_auc']:.3f} over {judge['n_authors']} "
            f"authors (min {judge['min_auc']:.3f}; {judge['n_below_0.65']} below 0.65), real texts never trained on")


def markdown_table(summary: dict[str, Any]) -> str:
    """DITTO's main-table shape per evaluator (win rate vs base / vs prompt, 95% CI), then the per-author view."""
    lines = [f"# Author benchmark: {summary.get('dataset', '?')} ({len(summary.get('authors', []))} authors)", "",
             validity_line(summary), ""]
    for evaluator, by_method in summary.get("vs", {}).items():
        lines += [f"## {evaluator}", "", "| method | mean | win vs base [95% CI] | win vs prompt [95% CI] |",
                  "|---|---|---|---|"]
        for method, stats in by_method.items():
            mean = summary["methods"].get(method, {}).get(evaluator)
            cells = []
            for baseline in BASELINES:
                w = stats.get(baseline)
                cells.append("—" if w is None else f"{w['rate']:.0%} [{w['ci_low']:.0%}, {w['ci_high']:.0%}] "
                                                   f"(W{w['wins']}/T{w['ties']}/L{w['losses']})")
            lines.append(f"| {method} | {'—' if mean is None else f'{mean:.3f}'} | {cells[0]} | {cells[1]} |")
        lines.append("")
    per_author = summary.get("per_author", {})
    if per_author:
        methods = list(summary.get("methods", {}))
        lines += ["## per author (mean P(author); judge AUC)", "",
                  "| author | judge AUC | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
        for author, entry in per_author.items():
            auc = entry.get("judge_auc")
            means = [entry.get("mean", {}).get(m) for m in methods]
            lines.append(f"| {author} | {'—' if auc is None else f'{auc:.2f}'} | "
                         + " | ".join("—" if v is None else f"{v:.3f}" for v in means) + " |")
    return "\n".join(lines) + "\n"
