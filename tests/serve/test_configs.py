"""The shipped serve and OpenAI-compatible model configs parse into their typed configs."""

from __future__ import annotations

from pathlib import Path

from personalign.config import ModelConfig
from personalign.serve.config import ServeConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_serve_example_config():
    config = ServeConfig.load(CONFIGS / "serve" / "example.yaml")
    assert config.methods == ["prompt", "prompt-rag"] and config.host == "127.0.0.1"


def test_openai_compatible_model_config():
    config = ModelConfig.load(CONFIGS / "models" / "openai-compatible.yaml")
    assert config.backend == "openai" and config.openai.base_url.endswith("/v1")
