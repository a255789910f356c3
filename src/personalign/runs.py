"""Run directories: resolved config, environment, outputs and metrics, all written atomically."""

from __future__ import annotations

import json
import os
import platform
import random
import subprocess
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from personalign.io import atomic_write_json, atomic_write_jsonl, atomic_write_yaml, read_jsonl

TRACKED_PACKAGES = (
    "personalign", "torch", "transformers", "peft", "trl", "accelerate", "datasets",
    "sentence-transformers", "scikit-learn", "numpy", "pydantic",
)


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) so a run can be repeated."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


class RunDir:
    """One run's folder: `config.yaml`, `env.json`, `outputs.jsonl`, `metrics.jsonl` and method artifacts.

    JSONL files are rewritten whole through a temp file on every flush (they are small), so an
    interrupted run never leaves a truncated line behind.
    """

    def __init__(self, path: str | Path, wandb_project: str | None = None):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._metrics: list[dict[str, Any]] = self._load_rows("metrics.jsonl")
        self._outputs: list[dict[str, Any]] = self._load_rows("outputs.jsonl")
        self._wandb = None
        if wandb_project:
            self._wandb = _start_wandb(wandb_project, self.path)

    @classmethod
    def new(cls, root: str | Path, name: str, **kwargs: Any) -> RunDir:
        """A fresh folder `root/name-YYYYmmdd-HHMMSS` (never reuses an existing one)."""
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        path = Path(root) / f"{name}-{stamp}"
        suffix = 1
        while path.exists():
            suffix += 1
            path = Path(root) / f"{name}-{stamp}-{suffix}"
        return cls(path, **kwargs)

    def _load_rows(self, name: str) -> list[dict[str, Any]]:
        file = self.path / name
        return read_jsonl(file) if file.exists() else []

    def write_config(self, config: BaseModel | dict[str, Any]) -> None:
        data = config.model_dump(mode="json") if isinstance(config, BaseModel) else config
        atomic_write_yaml(self.path / "config.yaml", data)
        if self._wandb is not None:
            self._wandb.config.update(data, allow_val_change=True)

    def write_env(self, seed: int, device: str | None = None, **extra: Any) -> dict[str, Any]:
        import torch

        env = {
            "seed": seed,
            "device": device,
            "time_utc": datetime.now(UTC).isoformat(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "cuda_available": torch.cuda.is_available(),
            "git_commit": _git_commit(),
            "versions": package_versions(),
            **extra,
        }
        atomic_write_json(self.path / "env.json", env)
        return env

    def log_metrics(self, record: dict[str, Any], step: int | None = None) -> None:
        row = {"time": time.time(), **({"step": step} if step is not None else {}), **record}
        self._metrics.append(row)
        atomic_write_jsonl(self.path / "metrics.jsonl", self._metrics)
        if self._wandb is not None:
            numeric = {k: v for k, v in record.items() if isinstance(v, int | float)}
            self._wandb.log(numeric, step=step)

    def add_outputs(self, rows: list[dict[str, Any]]) -> None:
        self._outputs.extend(rows)
        atomic_write_jsonl(self.path / "outputs.jsonl", self._outputs)

    @property
    def metrics(self) -> list[dict[str, Any]]:
        return list(self._metrics)

    @property
    def outputs(self) -> list[dict[str, Any]]:
        return list(self._outputs)

    def write_json(self, name: str, obj: Any) -> Path:
        return atomic_write_json(self.path / name, obj)

    def read_json(self, name: str) -> Any:
        return json.loads((self.path / name).read_text(encoding="utf-8"))

    def finish(self) -> None:
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def _start_wandb(project: str, run_path: Path) -> Any:
    """Start a wandb run; offline mode (WANDB_MODE=offline) works with no network."""
    try:
        import wandb
    except ImportError:
        from personalign.errors import PersonalignError

        raise PersonalignError("--wandb needs the wandb package: pip install 'personalign[wandb]'") from None
    return wandb.init(project=project, dir=str(run_path), name=run_path.name, reinit=True)
