"""Build a generation backend from a ModelConfig (new backends register here, methods stay untouched)."""

from __future__ import annotations

from personalign.backends.base import GenerationBackend
from personalign.config import ModelConfig


def build_backend(config: ModelConfig) -> GenerationBackend:
    if config.backend == "hf":
        from personalign.backends.hf import HFBackend

        return HFBackend(config)
    if config.backend == "openai":
        from personalign.backends.openai import OpenAIBackend

        return OpenAIBackend(config)
    if config.backend == "tinker":
        from personalign.backends.tinker import TinkerBackend

        return TinkerBackend(config)
    raise ValueError(f"unknown backend {config.backend!r}")
