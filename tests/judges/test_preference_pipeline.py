"""Rubric preference pipeline: judge-labeled pairs, ties and unparseable verdicts dropped and counted."""

from __future__ import annotations

from personalign.config import ModelConfig, SamplingConfig
from personalign.judges.base import RulesJudge
from personalign.judges.llm import LLMJudge
from personalign.judges.preference_pipeline import (
    PREFERENCES_FILE,
    MixedJudge,
    PreferenceConfig,
    build_preferences,
    label_pairs,
)
from personalign.profiles import load_profile
from personalign.runs import RunDir

GOOD = "Hi Sam,\n\nThank you for the notes; they helped a lot. I will send the draft on Friday. " \
       "Could we meet next week to go over it together? I am free most afternoons.\n\nWarmly,\nMaya"
BAD = "Here is your email:\n\nDear [Recipient],\n- thanks\n- bye"


def test_rules_labels_and_counts(example_profile_path):
    profile = load_profile(example_profile_path)
    pairs, counts = label_pairs(RulesJudge(), profile, [("p1", BAD, GOOD), ("p2", GOOD, BAD), ("p3", GOOD, GOOD)])
    assert [(p.prompt, p.label) for p in pairs] == [("p1", "B"), ("p2", "A")]
    assert pairs[0].chosen_rejected() == (GOOD, BAD)
    assert counts == {"kept": 2, "tie": 1, "unparseable": 0}


def test_mixed_judge_sends_only_rule_ties_to_the_llm(example_profile_path, tiny_backend):
    """A tiny random model cannot answer in the judge format: its verdicts are counted as unparseable."""
    profile = load_profile(example_profile_path)
    llm = LLMJudge(tiny_backend, max_new_tokens=4)
    judge = MixedJudge(llm)
    pairs, counts = label_pairs(judge, profile, [("p1", BAD, GOOD), ("p2", GOOD, GOOD + " ")])
    assert [p.label for p in pairs] == ["B"]  # decided by rules, no LLM call needed
    assert counts["unparseable"] + counts["tie"] == 1


def test_build_preferences_samples_labels_saves_and_reuses(example_profile_path, tiny_backend, tmp_path):
    profile = load_profile(example_profile_path)
    profile = profile.model_copy(update={"eval_prompts": profile.eval_prompts[:2]})
    config = PreferenceConfig(labels="rules", sampler="base", pairs_per_prompt=1,
                              sampling=SamplingConfig(temperature=1.0, max_new_tokens=6, seed=0))
    run = RunDir(tmp_path / "prefs")
    pairs, report = build_preferences(profile, ModelConfig(), config, run, backend=tiny_backend)
    # training-side prompts only (5 demonstrations + 12 train_prompts): never an eval prompt
    assert report["prompts"] == 17 and report["candidates"] == 17
    evals = {p.prompt for p in profile.eval_prompts}
    assert not evals & {p.prompt for p in pairs}
    demo_pairs = [p for p in pairs if p.source == "demonstration"]
    assert len(demo_pairs) == 5 and all(p.label == "A" for p in demo_pairs)
    assert report["pairs"] == len(pairs) == report["kept"] + 5
    assert (run.path / PREFERENCES_FILE).is_file()
    again, report2 = build_preferences(profile, ModelConfig(), config, run, resume=True, backend=tiny_backend)
    assert [(p.prompt, p.a, p.b, p.label) for p in again] == [(p.prompt, p.a, p.b, p.label) for p in pairs]
    assert "reused" in report2
