"""Profile validation: the example loads, and each kind of bad input names the file, field and fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from personalign.errors import ProfileError
from personalign.judges.rules import compliance
from personalign.profiles import load_profile
from personalign.profiles.loading import parse_profile

GOOD = {
    "name": "Ada Park",
    "task": "write emails",
    "demonstrations": [{"prompt": "Say thanks.", "output": "Thank you!"}],
}


def test_example_profile_is_valid_and_its_demonstrations_follow_its_constraints(example_profile_path: Path):
    profile = load_profile(example_profile_path)
    assert len(profile.demonstrations) >= 4
    assert len(profile.eval_prompts) >= 12
    assert profile.constraints.sign_off == "Warmly,\nMaya"
    report = compliance([d.output for d in profile.demonstrations], profile.constraints)
    assert report.rate == 1.0, report.failures


def test_second_profile_differs_from_the_example_and_its_demonstrations_follow_it(example_profile_path: Path):
    example = load_profile(example_profile_path)
    ops = load_profile(example_profile_path.parent / "ops-manager.yaml")
    assert len(ops.demonstrations) >= 4 and len(ops.eval_prompts) >= 12
    assert ops.constraints.sign_off != example.constraints.sign_off
    assert (ops.constraints.min_words, ops.constraints.max_words) != (example.constraints.min_words,
                                                                       example.constraints.max_words)
    assert not set(ops.constraints.banned_substrings) & set(example.constraints.banned_substrings)
    report = compliance([d.output for d in ops.demonstrations], ops.constraints)
    assert report.rate == 1.0, report.failures


def test_json_profile_and_short_eval_prompt_form(tmp_path: Path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({**GOOD, "eval_prompts": ["Ask for a meeting.", {"prompt": "x", "reference": "y"}]}))
    profile = load_profile(path)
    assert [p.prompt for p in profile.eval_prompts] == ["Ask for a meeting.", "x"]
    assert profile.eval_prompts[1].reference == "y"


def _write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {k: v for k, v in GOOD.items() if k != "demonstrations"},
            "field 'demonstrations' is missing; add at least one",
        ),
        ({**GOOD, "demonstrations": []}, "field 'demonstrations' is empty"),
        ({**GOOD, "demonstrations": "hello"}, "field 'demonstrations'"),
        ({**GOOD, "demonstrations": [{"prompt": "x"}]}, "field 'demonstrations.0.output' is missing"),
        ({**GOOD, "favourite_color": "blue"}, "field 'favourite_color' is not a profile field"),
        ({**GOOD, "constraints": {"min_words": 10, "max_words": 5}}, "min_words (10) is above max_words (5)"),
        ({**GOOD, "constraints": {"max_words": "many"}}, "field 'constraints.max_words'"),
        (["a", "list"], "expected a mapping of profile fields"),
    ],
)
def test_bad_profiles_name_file_field_and_fix(tmp_path: Path, data: object, expected: str):
    path = _write(tmp_path, data)
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    message = str(info.value)
    assert str(path) in message
    assert expected in message
    assert "\n" not in message


def test_empty_missing_and_non_utf8_files(tmp_path: Path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("  \n")
    with pytest.raises(ProfileError, match="the file is empty"):
        load_profile(empty)
    with pytest.raises(ProfileError, match="profile file not found"):
        load_profile(tmp_path / "nope.yaml")
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("name: Jos\xe9\n".encode("latin-1"))
    with pytest.raises(ProfileError, match="not UTF-8 text"):
        load_profile(latin)
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(ProfileError, match="invalid YAML"):
        load_profile(broken)


def test_parse_profile_accepts_dicts():
    assert parse_profile(GOOD).first_name == "Ada"
