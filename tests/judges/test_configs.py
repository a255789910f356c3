"""The shipped judge / reward / rlaif YAML configs parse into their typed configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from personalign.cli.judge import JudgeValidateConfig
from personalign.cli.reward import RewardTrainConfig
from personalign.config import resolve_config
from personalign.evaluation.hacking import select_heldout_evaluator
from personalign.methods.rlaif import RLAIFConfig, parse_reward_spec

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "judges"


@pytest.mark.parametrize("name", ["validate-llm.yaml", "validate-rules.yaml"])
def test_validate_configs(name):
    assert resolve_config(JudgeValidateConfig, CONFIGS / name, {}).data[0] == "prometheus-hhh"


@pytest.mark.parametrize("name", ["reward-minilm-hh.yaml", "reward-profile-rules.yaml"])
def test_reward_configs(name):
    assert resolve_config(RewardTrainConfig, CONFIGS / name, {}).rm.backbone == "minilm"


def test_rlaif_config(tmp_path):
    from personalign.cli.personalize import PersonalizeConfig

    cfg = resolve_config(PersonalizeConfig, CONFIGS / "rlaif-example.yaml", {})
    method_config = RLAIFConfig.model_validate(cfg.method_config)
    assert method_config.heldout == "auto"
    # with an RM trained on a labeled set, the length term leaves similarity as the held-out evaluator
    rm = tmp_path / "rm"
    rm.mkdir()
    (rm / "config.yaml").write_text((CONFIGS / "reward-minilm-hh.yaml").read_text())
    terms = parse_reward_spec(method_config.reward.replace("RUN_DIR", str(rm)))
    assert select_heldout_evaluator(terms, method_config.heldout) == "similarity"


def test_gen_rm_config():
    cfg = resolve_config(RewardTrainConfig, CONFIGS / "gen-rm-profile-rules.yaml", {})
    assert (cfg.rm.kind, cfg.rm.backbone, cfg.rm.lora, cfg.rm.max_length) == ("gen-rm", "default", True, 2048)
    # fields a gen-rm config leaves out take gen-rm's defaults, the bt ones stay bt's
    assert resolve_config(RewardTrainConfig, None, {"rm.kind": "gen-rm"}).rm.learning_rate == 5e-4
    assert resolve_config(RewardTrainConfig, None, {}).rm.learning_rate == 5e-5
