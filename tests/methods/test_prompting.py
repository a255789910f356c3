"""Prompt building and retrieval of demonstrations."""

from __future__ import annotations

import numpy as np

from personalign.methods.base import build_personalizer
from personalign.methods.prompting import PromptMethod, describe_constraints, nearest_demonstrations
from personalign.profiles import Demonstration, load_profile


def test_prompt_method_builds_system_rules_and_fewshot_turns(tiny_backend, example_profile_path):
    profile = load_profile(example_profile_path)
    method = build_personalizer("prompt", tiny_backend, {"k": 2})
    method.fit(profile)
    conv = method.conversation("Ask Jo for coffee.")
    assert conv[0]["role"] == "system"
    system = conv[0]["content"]
    assert "Maya Chen" in system and "write emails" in system
    assert all(rule in system for rule in profile.rules)
    assert "Write between 50 and 150 words." in system
    assert "Never use '—'." in system
    assert [m["role"] for m in conv[1:]] == ["user", "assistant", "user", "assistant", "user"]
    assert conv[1]["content"] == profile.demonstrations[0].prompt
    assert conv[2]["content"] == profile.demonstrations[0].output
    assert conv[-1] == {"role": "user", "content": "Ask Jo for coffee."}


def test_prompt_method_system_format_and_all_demos(tiny_backend, example_profile_path):
    profile = load_profile(example_profile_path)
    method = PromptMethod(tiny_backend, PromptMethod.config_class(fewshot_format="system", include_rules=False))
    method.fit(profile)
    conv = method.conversation("x")
    assert len(conv) == 2
    assert all(d.output in conv[0]["content"] for d in profile.demonstrations)
    assert "Style rules" not in conv[0]["content"]


def test_describe_constraints_sign_off_line(example_profile_path):
    lines = describe_constraints(load_profile(example_profile_path).constraints)
    assert "End with exactly this sign-off: Warmly, + line break + Maya" in lines


def test_nearest_demonstrations_ranks_by_cosine_most_similar_last():
    demos = [Demonstration(prompt=f"p{i}", output=f"o{i}") for i in range(3)]
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=np.float32)
    query = np.array([0.0, 1.0], dtype=np.float32)  # similarities: 0.0, 1.0, 0.8
    picked = nearest_demonstrations(query, vectors, demos, k=2)
    assert [d.prompt for d in picked] == ["p2", "p1"]


def test_prompt_rag_retrieves_the_semantically_closest_demo(tiny_backend, example_profile_path, tmp_path, monkeypatch):
    monkeypatch.setenv("PERSONALIGN_CACHE", str(tmp_path))
    profile = load_profile(example_profile_path)
    method = build_personalizer("prompt-rag", tiny_backend, {"k": 1, "embedder": "minilm"})
    method.fit(profile)
    conv = method.conversation("Please write a thank-you note to the professor who wrote my recommendation letter.")
    assert "recommendation letter" in conv[1]["content"]
    conv = method.conversation("A recruiter asked when I can interview; give my availability in Pacific time.")
    assert "availability" in conv[1]["content"]
