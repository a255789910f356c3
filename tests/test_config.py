"""Typed configs: defaults < YAML < flags, dotted keys, clear errors, YAML round trip."""

from __future__ import annotations

import pytest
import yaml

from personalign.config import ModelConfig, SamplingConfig, resolve_config
from personalign.errors import PersonalignError
from personalign.evaluation.compare import CompareConfig


def test_precedence_defaults_then_yaml_then_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"methods": ["base"], "sampling": {"seed": 3, "max_new_tokens": 20}}))
    cfg = resolve_config(CompareConfig, path, {"sampling.seed": 9, "n_prompts": None})
    assert cfg.methods == ["base"]
    assert cfg.sampling.seed == 9  # flag wins
    assert cfg.sampling.max_new_tokens == 20  # yaml kept
    assert cfg.sampling.top_p == SamplingConfig().top_p  # default
    assert cfg.n_prompts is None


def test_round_trip_through_yaml(tmp_path):
    cfg = CompareConfig(methods=["prompt"], model=ModelConfig(dtype="fp32"))
    cfg.save(tmp_path / "resolved.yaml")
    assert CompareConfig.load(tmp_path / "resolved.yaml") == cfg


def test_unknown_and_invalid_keys_are_reported(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"method": ["base"], "sampling": {"top_p": 2}}))
    with pytest.raises(PersonalignError) as info:
        resolve_config(CompareConfig, path, {})
    assert "method: unknown key" in str(info.value)
    assert "sampling.top_p" in str(info.value)
    path.write_text("- a\n- b\n")
    with pytest.raises(PersonalignError, match="expected a mapping"):
        resolve_config(CompareConfig, path, {})
