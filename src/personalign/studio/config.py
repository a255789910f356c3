"""Typed config of `personalign studio` (every flag maps to a field here)."""

from __future__ import annotations

from pydantic import Field

from personalign.config import Config, ModelConfig, SamplingConfig
from personalign.feedback.db import MAX_TEXT_CHARS
from personalign.serve.config import LOOPBACK  # one definition of "loopback" for both servers

__all__ = ["LOOPBACK", "StudioConfig"]


class StudioConfig(Config):
    profile: str = Field(..., description="profile YAML/JSON (the profile page edits this file)")
    methods: list[str] = Field(default_factory=lambda: ["base", "prompt", "prompt-rag"],
                               description="untrained methods to draw candidates from")
    runs: list[str] = Field(default_factory=list, description="trained run dirs to draw candidates from")
    prompts: str | None = Field(
        None, description="text file of prompts, one per line, to compare on (default: the profile's eval prompts; "
        "answers on eval prompts stay out of training)")
    db: str = Field("feedback.sqlite", description="feedback database (created if absent)")
    host: str = Field("127.0.0.1", description="bind address; anything but loopback needs a token")
    port: int = Field(8001, ge=1, le=65535)
    token: str | None = Field(None, description="access token required on every request when set")
    seed: int = Field(0, description="seeds the pair/order draws and each candidate's sampling seed")
    max_text_chars: int = Field(MAX_TEXT_CHARS, ge=100, description="longest prompt or edit accepted")
    max_waiting: int = Field(4, ge=1, description="generation requests queued before new ones get 429")
    model: ModelConfig = Field(default_factory=ModelConfig)
    # The same mild repetition penalty as `compare`, so the studio shows what `compare` measures.
    sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig(repetition_penalty=1.15))
