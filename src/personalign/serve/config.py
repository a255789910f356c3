"""The typed config of `personalign serve` (every flag maps to a field here)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from personalign.config import Config, ModelConfig

LOOPBACK = ("127.0.0.1", "localhost", "::1")


class ServeConfig(Config):
    """What to serve, where, and how requests are batched and shed."""

    runs: list[str] = Field(default_factory=list, description="trained run dirs (DIR or DIR+prompt), one model each")
    profile: str | None = Field(None, description="profile for --methods (and replaces the profile of runs)")
    methods: list[str] = Field(default_factory=list, description="untrained methods served as `<profile>-<method>`")
    method_configs: dict[str, dict[str, Any]] = Field(default_factory=dict, description="per-method config fields")
    model: ModelConfig = Field(default_factory=ModelConfig, description="base model (runs name their own)")
    engine: Literal["hf", "vllm"] = "hf"
    host: str = Field("127.0.0.1", description="bind address; anything but loopback needs api_key")
    port: int = Field(8000, ge=0, le=65535, description="0 = any free port")
    api_key: str | None = Field(None, description="required as `Authorization: Bearer KEY` when set")
    adapter_root: str | None = Field(None, description="hot-load adapters and runs from under this folder only")
    # A batch of 32 is where the default model's CPU throughput flattens (BENCHMARKS.md, sampling); the
    # window is short next to a generation (seconds) and long next to a client's turnaround (ms).
    max_batch: int = Field(32, ge=1, description="most sequences merged into one generate call")
    batch_window_ms: float = Field(25.0, ge=0, description="a batch keeps collecting while requests arrive "
                                   "within this gap of each other")
    max_wait_ms: float = Field(250.0, ge=0, description="the longest the first request of a batch waits for others")
    max_queue: int = Field(256, ge=1, description="requests waiting or running; beyond it 429 + Retry-After")
    max_tokens_limit: int = Field(2048, ge=1, description="largest max_tokens a request may ask for")
    retry_after_s: int = Field(1, ge=1, description="Retry-After seconds sent with 429")
    shutdown_timeout_s: float = Field(30.0, ge=0, description="graceful shutdown: time to finish in-flight requests")
    vllm_python: str = Field(".venv-vllm/bin/python", description="python of the vLLM venv (make vllm-venv)")
    vllm_args: list[str] = Field(default_factory=list, description="extra arguments for vLLM's server")
