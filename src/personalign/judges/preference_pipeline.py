"""Rubric preference pipeline: sample output pairs for a profile's prompts, label them with a judge, train an RM.

The assignment's `rubric_preference_env`: the policy (a prompting method over the base model, so the
samples look like what RL will see) answers every training-side profile prompt (demonstrations and
`train_prompts`; never an eval prompt, see `personalign.splits`) twice; the `rules` judge, the `llm`
judge, or `mix` (rules first, the LLM only where rules tie) picks the better answer; ties and
unparseable verdicts are dropped and counted. The profile's demonstrations join as pairs
(demonstration ≻ sample) when `include_demonstrations` is on. The labeled pairs are saved as
`preferences.jsonl`, so a resumed run reuses them instead of sampling again. The reward model's held-out
split is by prompt (`judges.reward_model.split_pairs`): pairs of one prompt never straddle it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field

from personalign.config import Config, ModelConfig, SamplingConfig
from personalign.errors import PersonalignError
from personalign.io import atomic_write_jsonl, read_jsonl
from personalign.judges.base import Judge, RulesJudge, Verdict
from personalign.judges.labeled_sets import LabeledPair
from personalign.profiles.schema import Profile
from personalign.runs import RunDir
from personalign.splits import normalize, training_prompts

PREFERENCES_FILE = "preferences.jsonl"


class PreferenceConfig(Config):
    """How preference pairs are sampled and labeled."""

    labels: Literal["rules", "llm", "mix"] = "rules"
    sampler: str = Field("prompt", description="method whose outputs are sampled (prompt, base, prompt-rag)")
    pairs_per_prompt: int = Field(2, ge=1, description="pairs sampled per profile prompt")
    include_demonstrations: bool = Field(True, description="add (demonstration ≻ sample) pairs")
    sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig(temperature=1.0, max_new_tokens=160))
    judge_model: ModelConfig | None = Field(None, description="LLM judge model; None = the policy's model")


class MixedJudge(Judge):
    """Rules decide; only pairs the rules call a tie go to the LLM judge."""

    name = "mix"
    order_sensitive = True

    def __init__(self, llm: Judge):
        self.rules, self.llm = RulesJudge(), llm

    def score_many(self, prompts, outputs, profile=None, rubrics=None):  # type: ignore[no-untyped-def]
        return self.rules.score_many(prompts, outputs, profile, rubrics)

    def compare_many(self, prompts, a, b, profile=None, rubrics=None) -> list[Verdict]:  # type: ignore[no-untyped-def]
        verdicts = self.rules.compare_many(prompts, a, b, profile, rubrics)
        ties = [i for i, v in enumerate(verdicts) if v.winner == "tie"]
        if ties:
            asked = self.llm.compare_many([prompts[i] for i in ties], [a[i] for i in ties], [b[i] for i in ties],
                                          profile)
            for i, verdict in zip(ties, asked, strict=True):
                verdicts[i] = verdict
        return verdicts


def build_judge(kind: str, backend: Any) -> Judge:
    if kind == "rules":
        return RulesJudge()
    from personalign.judges.llm import LLMJudge

    llm = LLMJudge(backend, progress=True)
    return llm if kind == "llm" else MixedJudge(llm)


def label_pairs(
    judge: Judge, profile: Profile, candidates: Sequence[tuple[str, str, str]]
) -> tuple[list[LabeledPair], dict[str, int]]:
    """Judge (prompt, a, b) candidates; keep decided pairs. Returns pairs and counts of kept/tied/unparseable."""
    verdicts = judge.compare_many([c[0] for c in candidates], [c[1] for c in candidates], [c[2] for c in candidates],
                                  profile)
    kept, counts = [], {"kept": 0, "tie": 0, "unparseable": 0}
    for (prompt, a, b), verdict in zip(candidates, verdicts, strict=True):
        if verdict.winner is None:
            counts["unparseable"] += 1
        elif verdict.winner == "tie" or a.strip() == b.strip():
            counts["tie"] += 1
        else:
            kept.append(LabeledPair(prompt, a, b, verdict.winner, source=f"{judge.name}-labeled"))
            counts["kept"] += 1
    return kept, counts


def build_preferences(
    profile: Profile, policy: ModelConfig, config: PreferenceConfig, run_dir: RunDir | None = None,
    resume: bool = False, backend: Any = None,
) -> tuple[list[LabeledPair], dict[str, Any]]:
    """Sample, label and save preference pairs for the profile (reused from the run dir on resume).

    `backend` injects an already-built policy backend instead of building one from `policy`.
    """
    from personalign.backends.registry import build_backend
    from personalign.methods.base import build_personalizer

    saved = run_dir.path / PREFERENCES_FILE if run_dir is not None else None
    if resume and saved is not None and saved.is_file():
        rows = read_jsonl(saved)
        return [LabeledPair(**row) for row in rows], {"reused": str(saved), "kept": len(rows)}
    prompts = training_prompts(profile)
    backend = backend or build_backend(policy)
    sampler = build_personalizer(config.sampler, backend)
    sampler.fit(profile)
    samples = sampler.generate(prompts, config.sampling.model_copy(update={"n": 2 * config.pairs_per_prompt}),
                               progress=True)
    candidates = [(p, outs[2 * k], outs[2 * k + 1]) for p, outs in zip(prompts, samples, strict=True)
                  for k in range(config.pairs_per_prompt)]
    judge_backend = build_backend(config.judge_model) if config.judge_model else backend
    pairs, counts = label_pairs(build_judge(config.labels, judge_backend), profile, candidates)
    if config.include_demonstrations:
        by_prompt = {normalize(p): outs for p, outs in zip(prompts, samples, strict=True)}
        for demo in profile.demonstrations:
            pairs.append(LabeledPair(demo.prompt, demo.output, by_prompt[normalize(demo.prompt)][0], "A",
                                     source="demonstration"))
    if not pairs:
        raise PersonalignError(
            f"no usable preference pairs ({counts}); use --labels rules, more --pairs-per-prompt, or a labeled FILE"
        )
    report = {"prompts": len(prompts), "candidates": len(candidates), **counts, "pairs": len(pairs),
              "labels": config.labels}
    if saved is not None:
        atomic_write_jsonl(saved, [vars(p) for p in pairs])
    return pairs, report

