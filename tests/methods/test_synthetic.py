"""Synthetic data: prompt cleaning, filtering by constraints and near-duplicates, counts per reason, reuse."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from personalign.backends.base import Conversation, GenerationBackend
from personalign.config import SamplingConfig
from personalign.errors import DataError
from personalign.io import atomic_write_jsonl
from personalign.methods.sft import SFTMethod
from personalign.methods.synthetic import (
    SyntheticConfig,
    clean_prompt,
    generate_synthetic,
    load_synthetic,
    near_duplicates,
    save_synthetic,
)
from personalign.profiles.loading import parse_profile

DEMO_OUTPUT = "Hi Al, thanks so much for the lovely dinner on Friday night with everyone.\n\nCheers,\nZed"
PROFILE = parse_profile({
    "name": "Zed Toy", "task": "write notes",
    "demonstrations": [{"prompt": "Thank Al for dinner.", "output": DEMO_OUTPUT}],
    "constraints": {"sign_off": "Cheers,\nZed", "banned_substrings": ["!"]},
})


class ScriptedTeacher(GenerationBackend):
    """A parsing-test double: returns fixed texts for prompt requests, then for output requests, in order."""

    name = "scripted"

    def __init__(self, prompts: list[str], outputs: list[str]):
        self.prompts, self.outputs = list(prompts), list(outputs)
        self.requests: list[Conversation] = []

    def generate(self, conversations: Sequence[Conversation], sampling: SamplingConfig,
                 progress: bool = False) -> list[list[str]]:
        self.requests += conversations
        source = self.prompts if "invent" in conversations[0][0]["content"] else self.outputs
        return [[source.pop(0)] for _ in conversations]

    def logprobs(self, conversations, completions):  # pragma: no cover - not used
        raise NotImplementedError


def test_clean_prompt_strips_labels_markers_and_quotes():
    assert clean_prompt('Request: "Ask Bo to lunch on Monday."\nextra') == "Ask Bo to lunch on Monday."
    assert clean_prompt("\n- 1. Invite Cy to the party.") == "Invite Cy to the party."
    assert clean_prompt("   ") == ""


def test_near_duplicates_against_reference_and_kept_items():
    a, b = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    near_a = np.array([0.99, 0.141]) / np.linalg.norm([0.99, 0.141])
    flags = near_duplicates(np.stack([b, near_a, b]), reference=a[None, :], threshold=0.9)
    assert flags == [False, True, True]  # near the demonstration; then a repeat of a kept item


def test_generate_synthetic_filters_and_counts_each_reason():
    good = "Hi Bo, thank you for helping me move the couch up three flights of stairs today.\n\nCheers,\nZed"
    teacher = ScriptedTeacher(
        prompts=["Request: Thank Bo for helping me move.", "ok", "Ask Cy for notes.", "Thank Al for dinner.",
                 "Invite Di to the game on Sunday.", "Thank Ed for the lovely dinner."],
        outputs=[good, "Hi Cy, can I borrow your notes!\n\nCheers,\nZed",
                 "Hi Di, want to come to the game on Sunday?", DEMO_OUTPUT.replace("Al", "Ed")],
    )
    rows, report = generate_synthetic(PROFILE, teacher, SyntheticConfig(n_candidates=6, n_keep=5))
    assert rows == [{"prompt": "Thank Bo for helping me move.", "output": good, "source": "synthetic"}]
    assert report["generated"] == 6 and report["kept"] == 1
    assert report["rejected"] == {
        "bad_prompt": 1,  # "ok"
        "duplicate_prompt": 1,  # a demonstration's prompt
        "constraint:banned_substrings": 1,
        "constraint:sign_off": 1,
        "near_duplicate": 1,  # the demonstration with one name changed
    }
    assert sum(report["rejected"].values()) + report["kept"] == report["generated"]
    # The outputs were written by the `prompt` method: rules and demonstrations are in the chat.
    output_request = teacher.requests[6]
    assert output_request[0]["role"] == "system" and "Zed" in output_request[0]["content"]
    assert output_request[1] == {"role": "user", "content": "Thank Al for dinner."}


def test_generated_prompts_are_seeded_and_varied():
    teacher = ScriptedTeacher(prompts=[f"Prompt number {i} here." for i in range(8)], outputs=["x"] * 8)
    generate_synthetic(PROFILE, teacher, SyntheticConfig(n_candidates=4, n_keep=0, seed=1))
    again = ScriptedTeacher(prompts=[f"Prompt number {i} here." for i in range(8)], outputs=["x"] * 8)
    generate_synthetic(PROFILE, again, SyntheticConfig(n_candidates=4, n_keep=0, seed=1))
    asks = [r[1]["content"] for r in teacher.requests[:4]]
    assert asks == [r[1]["content"] for r in again.requests[:4]]
    assert len(set(asks)) > 1


def test_saved_synthetic_file_is_reused_by_sft(tmp_path, tiny_backend):
    rows = [{"prompt": "Thank Bo.", "output": "Hi Bo, thanks.\n\nCheers,\nZed", "source": "synthetic"}]
    path = save_synthetic(tmp_path, rows, {"generated": 1, "kept": 1})
    assert (tmp_path / "synthetic_report.json").is_file()
    method = SFTMethod(tiny_backend, SFTMethod.config_class(synthetic_data=str(path)))
    training = method.training_rows(PROFILE, None)
    assert [r["source"] for r in training] == ["demonstration", "synthetic"]
    atomic_write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "x"}])
    with pytest.raises(DataError, match="'output' missing"):
        load_synthetic(tmp_path / "bad.jsonl")
