"""The shipped judge / reward / rlaif YAML configs parse into their typed configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from personalign.cli.judge import JudgeValidateConfig
from personalign.cli.reward import RewardTrainConfig
from personalign.config import resolve_config
from personalign.methods.rlaif import RLAIFConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "judges"


@pytest.mark.parametrize("name", ["validate-llm.yaml", "validate-rules.yaml"])
def test_validate_configs(name):
    assert resolve_config(JudgeValidateConfig, CONFIGS / name, {}).data[0] == "prometheus-hhh"


@pytest.mark.parametrize("name", ["reward-minilm-hh.yaml", "reward-profile-rules.yaml"])
def test_reward_configs(name):
    assert resolve_config(RewardTrainConfig, CONFIGS / name, {}).rm.backbone == "minilm"


def test_rlaif_config():
    from personalign.cli.personalize import PersonalizeConfig

    cfg = resolve_config(PersonalizeConfig, CONFIGS / "rlaif-example.yaml", {})
    assert RLAIFConfig.model_validate(cfg.method_config).heldout == "rules"
