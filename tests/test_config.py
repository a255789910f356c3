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


def test_a_config_file_accepts_the_flag_names(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("max_new_tokens: 12\nmax-new-tokens: 13\ntemperature: 0\n")
    cfg = resolve_config(CompareConfig, path, {})
    assert cfg.sampling.max_new_tokens == 13 and cfg.sampling.temperature == 0.0  # later key wins, as in YAML
    path.write_text("max_new_tokens: 12\nsampling: {seed: 4}\n")
    cfg = resolve_config(CompareConfig, path, {})
    assert (cfg.sampling.max_new_tokens, cfg.sampling.seed) == (12, 4)


def test_unknown_keys_suggest_the_closest_field(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("max_new_tokenz: 12\nsampling: {temprature: 1}\n")
    with pytest.raises(PersonalignError) as info:
        resolve_config(CompareConfig, path, {})
    assert "max_new_tokenz: unknown key (did you mean `max_new_tokens`?)" in str(info.value)
    assert "sampling.temprature: unknown key (did you mean `sampling.temperature`?)" in str(info.value)


def test_errors_name_the_flag_not_the_dotted_field():
    from typer.testing import CliRunner

    from personalign.cli.main import app

    result = CliRunner().invoke(app, ["generate", "--prompt", "x", "--max-new-tokens", "0"])
    assert result.exit_code == 2 and "command-line flags: --max-new-tokens: " in result.stderr
    assert "sampling.max_new_tokens" not in result.stderr
    with pytest.raises(PersonalignError, match=r"flags: sampling\.max_new_tokens: "):  # a library call: the field
        resolve_config(CompareConfig, None, {"sampling.max_new_tokens": 0})
    with pytest.raises(PersonalignError, match="--lr: "):
        resolve_config(CompareConfig, None, {"sampling.top_p": 0}, flags={"sampling.top_p": "--lr"})


def test_yaml_syntax_errors_give_line_and_column(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("methods: [base\nn_prompts: 2\n")
    with pytest.raises(PersonalignError, match=r"c\.yaml:\d+:\d+: invalid YAML"):
        resolve_config(CompareConfig, path, {})


def test_unknown_device_is_a_config_error():
    with pytest.raises(PersonalignError, match="unknown device 'gpu'; use auto, cpu, cuda"):
        resolve_config(CompareConfig, None, {"model.device": "gpu"})
    assert ModelConfig(device="cuda:1").device == "cuda:1"
    assert "Value error" not in _message(lambda: resolve_config(CompareConfig, None, {"model.device": "gpu"}))


def _message(call) -> str:
    try:
        call()
    except PersonalignError as exc:
        return str(exc)
    raise AssertionError("no error")


def test_defaults_are_not_changed_by_overrides():
    saved = {"sampling": {"max_new_tokens": 3}}
    cfg = resolve_config(CompareConfig, None, {"sampling.max_new_tokens": 4}, defaults=saved)
    assert cfg.sampling.max_new_tokens == 4 and saved == {"sampling": {"max_new_tokens": 3}}
