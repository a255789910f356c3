"""`personalign eval enron`: personalize to real people's own sent email and score against what they wrote.

Data: `<data>/enron/enron_sent.jsonl` (14 Enron employees' sent mail; see its README for provenance and
privacy: it is read by path and never shipped). Per sender, a seeded shuffle splits the emails into
`n_test` test emails (eval prompts with the email as reference), `judge_heldout` further emails that only
measure the authorship judge, and the training side: `k_demos` demonstrations (7, as in DITTO) plus the
texts the judge trains on. No test or judge-held-out email is ever on the training side (`split_sender`
asserts it).

Prompts are derived from each email the way DITTO derives CCAT50 prompts from an article's first sentence
(`profiles.infer.derive_prompt`): 'Write [a reply] email about "<subject>" that starts with the following:
<first sentence after the greeting>'. Because that sentence is given away, authorship, ROUGE-L and embedding
cosine score only the rest (`UnseenPartEvaluator`); constraint compliance scores the whole output against
the constraints `profile infer` found in the demonstrations alone. Win rates, CIs and the report come from
`authors_benchmark` (same loop, same summary, same table).
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field

from personalign.config import ModelConfig, SamplingConfig
from personalign.errors import DataError, PersonalignError
from personalign.evaluation.authors_benchmark import (
    PeopleBenchConfig,
    evaluators_for,
    finish,
    run_people,
)
from personalign.evaluation.authorship import AuthorshipJudge, fit_author_judge
from personalign.evaluation.evaluators import Evaluator, RulesEvaluator, Score
from personalign.io import read_jsonl
from personalign.profiles.infer import SourceText, infer_profile, unseen_part
from personalign.profiles.schema import Profile
from personalign.runs import RunDir, seed_everything
from personalign.settings import data_dir

ENRON_FILE = "enron_sent.jsonl"
PROMPT_MARKER = "starts with the following: "
QUICK_SENDERS = 3


@dataclass
class SenderSplit:
    """One sender's emails by role; no email is on two sides."""

    sender: str
    test: list[dict[str, Any]]
    judge_heldout: list[dict[str, Any]]
    demos: list[dict[str, Any]]
    judge_train: list[dict[str, Any]]


def _key(row: dict[str, Any]) -> str:
    return " ".join(row["body"].split()).casefold()


def load_enron(data: str | Path | None = None) -> dict[str, list[dict[str, Any]]]:
    """sender → their emails (rows with body, subject, ...), in file order."""
    path = data_dir(data) / "enron" / ENRON_FILE
    if not path.is_file():
        raise DataError(f"{path}: file not found; point --data-dir (or PERSONALIGN_DATA) at the folder that holds "
                        "enron/enron_sent.jsonl")
    by_sender: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for lineno, row in enumerate(read_jsonl(path), start=1):
        if not isinstance(row.get("sender"), str) or not isinstance(row.get("body"), str):
            raise DataError(f"{path}: line {lineno}: needs string fields 'sender' and 'body'")
        by_sender[row["sender"]].append(row)
    return dict(sorted(by_sender.items()))


def split_sender(sender: str, rows: Sequence[dict[str, Any]], n_test: int, judge_heldout: int, k_demos: int,
                 judge_pool: int, seed: int) -> SenderSplit:
    """Seeded split of one sender's emails: test | judge held-out | training side (demos first, then judge pool)."""
    # One copy per distinct text: an email sent twice must not sit on both sides.
    unique = list({_key(r): r for r in rows}.values())
    need = n_test + judge_heldout + k_demos
    if len(unique) < need + 2:
        raise DataError(f"enron: sender {sender!r} has {len(unique)} distinct emails; needs at least {need + 2} "
                        "(lower n_test, judge_heldout or k_demos)")
    order = list(range(len(unique)))
    random.Random(f"{seed}:{sender}").shuffle(order)
    shuffled = [unique[i] for i in order]
    test = shuffled[:n_test]
    held = shuffled[n_test : n_test + judge_heldout]
    train_side = shuffled[n_test + judge_heldout :]
    split = SenderSplit(sender, test, held, train_side[:k_demos], train_side[: max(judge_pool, k_demos)])
    evaluation = {_key(r) for r in split.test + split.judge_heldout}
    if evaluation & {_key(r) for r in split.demos + split.judge_train}:
        raise PersonalignError(f"enron: sender {sender!r}: a held-out email reached the training side")  # a bug
    return split


def sender_profile(split: SenderSplit) -> Profile:
    """`profile infer` on the demonstrations only; the test emails become eval prompts with references."""
    profile, _ = infer_profile(
        [SourceText(r["body"], r.get("subject") or None) for r in split.demos],
        name=f"Enron sender {split.sender}", task="write work emails",
        eval_texts=[SourceText(r["body"], r.get("subject") or None) for r in split.test],
    )
    return profile


def given_sentence(prompt: str) -> str:
    """The sentence a derived prompt gives away (empty when the prompt is not in the derived form)."""
    return prompt.split(PROMPT_MARKER, 1)[1] if PROMPT_MARKER in prompt else ""


class UnseenPartEvaluator:
    """Scores with `inner` only what the prompt did not give away: the given first sentence is cut from the
    output and from the reference, so copying the prompt earns nothing."""

    def __init__(self, inner: Evaluator):
        self.inner = inner
        self.name = inner.name

    def score(self, prompts: Sequence[str], outputs: Sequence[str], references: Sequence[str | None]) -> list[Score]:
        given = [given_sentence(p) for p in prompts]
        return self.inner.score(
            prompts, [unseen_part(o, g) for o, g in zip(outputs, given, strict=True)],
            [unseen_part(r, g) if r else r for r, g in zip(references, given, strict=True)],
        )


class EnronBenchConfig(PeopleBenchConfig):
    """Resolved config of one Enron benchmark run (written to the run dir as config.yaml)."""

    senders: list[str] | None = Field(None, description="sender ids (e.g. germany-c); None = all (3 with quick)")
    k_demos: int = Field(7, ge=1, description="demonstrations per sender (DITTO uses 7)")
    n_test: int = Field(12, ge=1, description="test emails per sender (4 with quick)")
    judge_heldout: int = Field(20, ge=0, description="extra held-out emails per sender for the judge's AUC only")
    sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig(max_new_tokens=384))
    seed: int = 0

    def resolved_senders(self, available: Sequence[str]) -> list[str]:
        if self.senders is None:
            return list(available[:QUICK_SENDERS]) if self.quick else list(available)
        bad = [s for s in self.senders if s not in available]
        if bad:
            raise PersonalignError(f"--senders: {bad} not in the Enron set (valid: {', '.join(available)})")
        return list(self.senders)

    def resolved_n_test(self) -> int:
        return min(self.n_test, 4) if self.quick and "n_test" not in self.model_fields_set else self.n_test


def enron_pools(splits: Sequence[SenderSplit]) -> tuple[dict[int, list[str]], dict[int, list[str]]]:
    """(train, held-out) text pools per person index, as `fit_author_judge` takes them."""
    train = {i: [r["body"] for r in s.judge_train] for i, s in enumerate(splits)}
    heldout = {i: [r["body"] for r in s.test + s.judge_heldout] for i, s in enumerate(splits)}
    return train, heldout


def run_enron_benchmark(
    cfg: EnronBenchConfig, progress: bool = True, echo: Callable[[str], None] | None = None
) -> tuple[RunDir, dict[str, Any]]:
    """Run (or resume) the Enron benchmark; returns the run dir and the summary written to summary.json."""
    say = echo or (lambda _msg: None)
    data = load_enron(cfg.data_dir)  # before any model loads: a missing data set is one line
    senders = cfg.resolved_senders(list(data))
    methods = cfg.resolved_methods()
    sampling = cfg.resolved_sampling()
    n_test = cfg.resolved_n_test()
    splits = [split_sender(s, data[s], n_test, cfg.judge_heldout, cfg.k_demos, cfg.judge_pool, cfg.seed)
              for s in senders]
    # Other senders outside the run still serve as negatives: more people make a sharper judge.
    others = [split_sender(s, data[s], n_test, cfg.judge_heldout, cfg.k_demos, cfg.judge_pool, cfg.seed)
              for s in data if s not in senders]
    train, heldout = enron_pools([*splits, *others])
    run = RunDir.open(cfg.out, "eval enron", cfg, resume=cfg.resume, name=cfg.name or "enron")
    run.write_env(sampling.seed, device=None if cfg.model.device == "auto" else cfg.model.device, methods=methods,
                  senders=senders)
    seed_everything(sampling.seed)
    from personalign.backends.registry import build_backend

    llm_backend = build_backend(ModelConfig(model=cfg.llm_judge, device=cfg.model.device)) if cfg.llm_judge else None

    def prepare(person: int) -> tuple[Profile, AuthorshipJudge, list[Evaluator]]:
        profile = sender_profile(splits[person])
        judge = fit_author_judge(person, train, heldout, cfg.judge_negatives, sampling.seed,
                                 embedder="minilm" if cfg.judge_embedding_weight > 0 else None,
                                 embedding_weight=cfg.judge_embedding_weight)
        inferred = profile.constraints.model_dump(exclude_defaults=True)
        say(f"author {person} = sender {senders[person]}: inferred constraints {inferred}")
        evaluators = [UnseenPartEvaluator(e) for e in evaluators_for(cfg, judge, profile, llm_backend)]
        return profile, judge, [*evaluators, RulesEvaluator(profile.constraints)]

    run_people(cfg, run, list(range(len(senders))), methods, sampling, prepare, progress, say)
    summary = finish(run, methods, cfg.n_boot, cfg.tie_margin, sampling.seed,
                     {"dataset": "enron", "authors": list(range(len(senders))),
                      "senders": dict(enumerate(senders)), "quick": cfg.quick, "k_demos": cfg.k_demos,
                      "n_test": n_test})
    return run, summary
