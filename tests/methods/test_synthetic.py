"""Synthetic data: structured prompts (structure, seeding, no eval collisions), best-of-n, logged and switchable
repairs, filtering by constraints and near-duplicates, counts per reason, reuse."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from personalign.backends.base import Conversation, GenerationBackend
from personalign.config import SamplingConfig
from personalign.errors import DataError
from personalign.io import atomic_write_jsonl
from personalign.judges.rules import check_text, count_words
from personalign.methods.sft import SFTMethod
from personalign.methods.synthetic import (
    LENGTH_CLASSES,
    SyntheticConfig,
    build_prompts,
    clean_prompt,
    demonstration_structure,
    generate_synthetic,
    load_synthetic,
    near_duplicates,
    repair,
    save_synthetic,
)
from personalign.profiles.loading import parse_profile

OTHER = "Hi Di, the printer on the third floor is fixed, so our report can go out on Monday morning as planned."
BODY = ("Hi Bo, thank you so much for helping me carry the couch up three flights of stairs today. "
        "I owe you dinner this weekend, and I will cook.")
DEMO_OUTPUT = "Hi Al, thanks so much for the lovely dinner on Friday night with everyone.\n\nCheers,\nZed"
PROFILE = parse_profile({
    "name": "Zed Toy", "task": "write notes",
    "demonstrations": [
        {"prompt": "Thank Al, my neighbor, for dinner.", "output": DEMO_OUTPUT},
        {"prompt": "Ask my teammate Kim to swap shifts.",
         "output": "Hi Kim, could we swap our shifts this Saturday morning?\n\nCheers,\nZed"},
    ],
    "constraints": {"sign_off": "Cheers,\nZed", "banned_substrings": ["—", "!"], "min_words": 10},
    "eval_prompts": ["Thank Nina for the flowers.", "Invite Marcus Patel to the game."],
})


class ScriptedTeacher(GenerationBackend):
    """A parsing-test double: returns fixed sample lists for output requests, in order; records requests."""

    name = "scripted"

    def __init__(self, outputs: list[list[str]], rephrasings: list[str] | None = None):
        self.outputs, self.rephrasings = list(outputs), list(rephrasings or [])
        self.requests: list[Conversation] = []
        self.samplings: list[SamplingConfig] = []

    def generate(self, conversations: Sequence[Conversation], sampling: SamplingConfig,
                 progress: bool = False) -> list[list[str]]:
        self.requests += conversations
        self.samplings.append(sampling)
        if "rewrite notes" in conversations[0][0]["content"]:
            return [[self.rephrasings.pop(0)] for _ in conversations]
        return [self.outputs.pop(0) for _ in conversations]

    def logprobs(self, conversations, completions):  # pragma: no cover - not used
        raise NotImplementedError


def test_prompt_builder_has_structure_and_draws_on_the_demonstrations():
    purposes, roles = demonstration_structure(PROFILE)
    assert purposes == ["thanks", "favor"] and roles == ["neighbor", "teammate"]
    specs = build_prompts(PROFILE, 30, seed=0)
    assert len(specs) == 30
    for spec in specs:
        assert spec.recipient in spec.text and spec.relationship in spec.text
        assert spec.length in LENGTH_CLASSES
        assert len(spec.details) == {"short": 1, "medium": 2, "detailed": 3}[spec.length]
        assert all(detail in spec.text for detail in spec.details)
        assert not spec.text.lower().startswith(("here", "sure"))
    assert {s.relationship for s in specs} & {"neighbor", "teammate"}  # the demonstrations' roles are used
    assert len({s.purpose for s in specs}) >= 5


def test_prompt_builder_is_seeded_deduplicated_and_avoids_eval_prompts():
    first = [s.text for s in build_prompts(PROFILE, 40, seed=3)]
    assert first == [s.text for s in build_prompts(PROFILE, 40, seed=3)]
    assert first != [s.text for s in build_prompts(PROFILE, 40, seed=4)]
    assert len({" ".join(t.lower().split()) for t in first}) == 40
    # Names from eval prompts (Nina, Marcus, Patel) and demonstrations (Al, Kim) never appear.
    for text in first:
        assert not {"Nina", "Marcus", "Patel", "Kim"} & set(text.replace(",", " ").replace(".", " ").split())


def test_repairs_fix_form_only_and_are_named():
    text = "Here is your email:\n\n" + BODY.replace("today.", "today — really!") + "\n\nBest,\n[Your Name]"
    fixed, applied = repair(text, PROFILE, {"—": "; ", "!": "."})
    assert applied == ["preamble", "banned:—", "banned:!", "sign_off"]
    assert fixed == BODY.replace("today.", "today; really.") + "\n\nCheers,\nZed"
    assert all(c.passed for c in check_text(fixed, PROFILE.constraints))
    # A banned substring without a configured replacement is left alone (and then fails its check).
    assert repair(BODY + " Wow!\n\nCheers,\nZed", PROFILE, {})[1] == []
    # A closing in the last lines of the body gives way to the sign-off.
    assert repair(BODY + "\nBest,\nZed", PROFILE, {})[0] == BODY + "\n\nCheers,\nZed"


def test_best_of_n_prefers_unrepaired_and_counts_every_reason():
    good = BODY + "\n\nCheers,\nZed"
    needs_sign_off = BODY.replace("Bo", "Cy")
    teacher = ScriptedTeacher(outputs=[
        [needs_sign_off, good],  # the unrepaired passing sample wins over the repairable first one
        [OTHER],  # only repairable: kept, logged as repaired
        ["Hi Ed, too short.\n\nCheers,\nZed", "- a bullet\n\nCheers,\nZed"],  # fails length whatever repairs
        ["Hi Fay, I wanted to tell you about the plan for the weekend and the"],  # truncated: not repairable
        [DEMO_OUTPUT + " "],  # passes, but a copy of a demonstration
    ])
    config = SyntheticConfig(n_candidates=5, n_keep=5, best_of=2)
    rows, report = generate_synthetic(PROFILE, teacher, config)
    assert [r["output"] for r in rows] == [good, OTHER + "\n\nCheers,\nZed"]
    assert [r["repairs"] for r in rows] == [[], ["sign_off"]]
    assert report["generated"] == 5 and report["kept"] == 2 and report["repaired"] == 1
    assert report["repairs"] == {"sign_off": 1}
    assert report["rejected"] == {"check:length": 1, "check:tell_truncated": 1, "near_duplicate": 1}
    assert sum(report["rejected"].values()) + report["kept"] == report["generated"]
    assert teacher.samplings[0].n == 2  # best-of-n asked of the backend in one call
    # The outputs were written by the `prompt` method: rules and demonstrations are in the chat.
    assert teacher.requests[0][0]["role"] == "system" and "Zed" in teacher.requests[0][0]["content"]
    assert teacher.requests[0][-1]["content"] == build_prompts(PROFILE, 5, 0)[0].text


def test_best_of_n_picks_the_passing_sample_nearest_the_demonstrations_median_length():
    # Demonstrations: 16 and 12 words (sign-off included), median 14. Both samples pass every check; the first
    # has 30 words, the second 15, so the second is kept although the first came first.
    long = BODY + "\n\nCheers,\nZed"
    near = "Hi Bo, thanks so much for carrying the couch up the stairs today.\n\nCheers,\nZed"
    assert [count_words(t) for t in (DEMO_OUTPUT, PROFILE.demonstrations[1].output, long, near)] == [16, 12, 30, 15]
    rows, _ = generate_synthetic(PROFILE, ScriptedTeacher(outputs=[[long, near]]),
                                 SyntheticConfig(n_candidates=1, n_keep=1, best_of=2))
    assert [r["output"] for r in rows] == [near]


def test_repairs_switch_off():
    teacher = ScriptedTeacher(outputs=[[BODY]])
    rows, report = generate_synthetic(PROFILE, teacher, SyntheticConfig(n_candidates=1, repairs=False))
    assert rows == [] and report["rejected"] == {"check:sign_off": 1} and report["repairs_enabled"] is False
    rows, report = generate_synthetic(PROFILE, ScriptedTeacher(outputs=[[BODY]]), SyntheticConfig(n_candidates=1))
    assert rows[0]["repairs"] == ["sign_off"] and report["repaired"] == 1


def test_teacher_rephrasing_is_used_when_sound_and_falls_back_otherwise():
    specs = build_prompts(PROFILE, 2, 0)
    name = specs[0].recipient.split()[0]
    teacher = ScriptedTeacher(
        outputs=[[BODY + "\n\nCheers,\nZed"], [OTHER + "\n\nCheers,\nZed"]],
        rephrasings=[f"Please write {name} a quick note about it.", "Here's a possible request: thank someone."],
    )
    rows, report = generate_synthetic(PROFILE, teacher, SyntheticConfig(n_candidates=2, prompt_source="teacher"))
    assert [r["prompt"] for r in rows] == [f"Please write {name} a quick note about it.", specs[1].text]
    assert report["repairs"] == {"prompt_fallback_structured": 1}


def test_clean_prompt_strips_labels_markers_and_quotes():
    assert clean_prompt('Request: "Ask Bo to lunch on Monday."\nextra') == "Ask Bo to lunch on Monday."
    assert clean_prompt("\n- 1. Invite Cy to the party.") == "Invite Cy to the party."
    assert clean_prompt("   ") == ""


def test_near_duplicates_against_reference_and_kept_items():
    a, b = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    near_a = np.array([0.99, 0.141]) / np.linalg.norm([0.99, 0.141])
    flags = near_duplicates(np.stack([b, near_a, b]), reference=a[None, :], threshold=0.9)
    assert flags == [False, True, True]  # near the demonstration; then a repeat of a kept item


def test_saved_synthetic_file_is_reused_by_sft(tmp_path, tiny_backend):
    rows = [{"prompt": "Thank Bo.", "output": "Hi Bo, thanks.\n\nCheers,\nZed", "source": "synthetic"}]
    path = save_synthetic(tmp_path, rows, {"generated": 1, "kept": 1})
    assert (tmp_path / "synthetic_report.json").is_file()
    method = SFTMethod(tiny_backend, SFTMethod.config_class(synthetic_data=str(path)))
    training = method.training_rows(PROFILE, None)
    assert [r["source"] for r in training] == ["demonstration", "demonstration", "synthetic"]
    atomic_write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "x"}])
    with pytest.raises(DataError, match="'output' missing"):
        load_synthetic(tmp_path / "bad.jsonl")
