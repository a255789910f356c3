"""Run directories: resolved config, environment, outputs and metrics, all written atomically."""

from __future__ import annotations

import json
import os
import platform
import random
import subprocess
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from personalign.errors import PersonalignError
from personalign.io import atomic_write_json, atomic_write_jsonl, atomic_write_yaml, read_jsonl, read_yaml

RUN_FILE = "run.json"
# Files a run dir holds before any result: a folder with only these has nothing worth keeping.
BOOKKEEPING = frozenset({RUN_FILE, "config.yaml", "env.json"})
# Fields that only say where and how long to run: a resumed run may change them, nothing else.
PLACEMENT_FIELDS = frozenset({
    "out", "run_dir", "resume", "runs_root", "name", "wandb", "data_dir", "data_path", "model.device",
    "model.batch_size", "rm.device", "device", "jobs", "torch_threads", "plots", "progress", "report",
    "num_processes", "accelerate_config",  # a resumed data-parallel run may use more or fewer processes
})
# Run dirs this process created, and the run being written (for cleanup on errors and the Ctrl-C message).
_CREATED: list[Path] = []
_ACTIVE: list[tuple[str, Path]] = []
# Callbacks that see every metrics row as it is logged (the CLI reports the data a method trains on).
_LISTENERS: list[Callable[[dict[str, Any]], None]] = []


def add_metrics_listener(listener: Callable[[dict[str, Any]], None]) -> None:
    _LISTENERS.append(listener)

TRACKED_PACKAGES = (
    "personalign", "torch", "transformers", "peft", "accelerate", "datasets",
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


def new_run_path(name: str, root: str | Path | None = None) -> Path:
    """`root/name-YYYYmmdd-HHMMSS` that does not exist yet (root: $PERSONALIGN_RUNS or ./runs)."""
    from personalign.settings import runs_root

    root = Path(root) if root is not None else runs_root()
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    path = root / f"{name}-{stamp}"
    suffix = 1
    while path.exists():
        suffix += 1
        path = root / f"{name}-{stamp}-{suffix}"
    return path


def run_command(path: str | Path) -> str | None:
    """The command that wrote run dir `path` (from its run.json), or None when it is not a run dir."""
    marker = Path(path) / RUN_FILE
    if not marker.is_file():
        return None
    try:
        return str(json.loads(marker.read_text(encoding="utf-8")).get("command"))
    except (OSError, ValueError, AttributeError):
        return None


def latest_run(command: str, root: str | Path | None = None) -> Path | None:
    """The newest run dir of `command` under the runs root (what a bare `--resume` continues)."""
    from personalign.settings import runs_root

    root = Path(root) if root is not None else runs_root()
    found = [p for p in root.glob("*") if p.is_dir() and run_command(p) == command] if root.is_dir() else []
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} → {'a.b': 1}: settings compared and named field by field."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def settings_diff(saved: dict[str, Any], new: dict[str, Any], ignore: Iterable[str] = ()) -> list[str]:
    """Dotted fields whose values differ, except placement fields (where and how long to run)."""
    skip = PLACEMENT_FIELDS | set(ignore)
    a, b = flatten(saved), flatten(new)
    return sorted(k for k in a.keys() | b.keys() if k not in skip and a.get(k) != b.get(k)
                  and not any(k.startswith(f"{s}.") for s in skip))


def check_run_target(path: Path, command: str, resume: bool, config: dict[str, Any] | None = None,
                     ignore: Iterable[str] = ()) -> None:
    """Refuse a target folder that `command` must not write into (see `RunDir.open`)."""
    if path.exists() and not path.is_dir():
        raise PersonalignError(f"--out {path}: is a file; pass a folder for the run dir")
    has_files = path.is_dir() and any(path.iterdir())
    owner = run_command(path) if has_files else None
    if resume:
        if not has_files:
            raise PersonalignError(f"--resume: {path} holds no run to resume; drop --resume to start it fresh")
        if owner != command:
            what = f"a `{owner}` run" if owner else "not a run dir"
            raise PersonalignError(f"--resume: {path} is {what}, not a `{command}` run; pass the --out of the run "
                                   "to continue")
        saved_file = path / "config.yaml"
        if config is not None and saved_file.is_file():
            differ = settings_diff(read_yaml(saved_file) or {}, config, ignore)
            if differ:
                raise PersonalignError(f"--resume: settings differ from the run in {path}: {', '.join(differ)}; "
                                       "resume with its settings or choose a new --out")
        return
    if not has_files:
        return
    if owner == command:
        saved = "checkpoints and results" if any(path.rglob("checkpoints")) else "results"
        raise PersonalignError(f"--out {path}: holds an earlier `{command}` run with {saved}; add --resume to "
                               "continue it, or choose a new --out")
    what = f"a `{owner}` run dir" if owner else "a folder of other files"
    raise PersonalignError(f"--out {path}: is {what} and not empty; `{command}` writes only into a new or empty "
                           "folder: choose another --out")


def discard_unfinished_new_runs() -> list[Path]:
    """Remove run dirs this process created that hold nothing but bookkeeping (after a user error)."""
    import shutil

    removed = []
    for path in _CREATED:
        if path.is_dir() and all(p.name in BOOKKEEPING or p.name == "wandb" for p in path.iterdir()):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    _CREATED.clear()
    return removed


def active_run() -> tuple[str, Path] | None:
    """(command, path) of the run this process is writing, if any."""
    return _ACTIVE[0] if _ACTIVE else None


def reset_run_tracking() -> None:
    _CREATED.clear()
    _ACTIVE.clear()
    _LISTENERS.clear()


class RunDir:
    """One run's folder: `config.yaml`, `env.json`, `outputs.jsonl`, `metrics.jsonl` and method artifacts.

    JSONL files are rewritten whole through a temp file on every flush (they are small), so an
    interrupted run never leaves a truncated line behind. Top-level runs are opened with `RunDir.open`
    (one resume contract for every command); `RunDir(path)` is the plain folder, e.g. a method's sub-run.
    """

    def __init__(self, path: str | Path, wandb_project: str | None = None, writer: bool = True):
        self.path = Path(path)
        # writer=False: a non-main process of a multi-process run. It reads the run dir (checkpoints, data rank 0
        # wrote) and keeps its rows in memory, but writes nothing: rank 0 writes the same rows once.
        self.writer = writer
        if writer:
            self.path.mkdir(parents=True, exist_ok=True)
        self._metrics: list[dict[str, Any]] = self._load_rows("metrics.jsonl")
        self._earlier = len(self._metrics)  # rows written by an earlier (interrupted) invocation
        self._outputs: list[dict[str, Any]] = self._load_rows("outputs.jsonl")
        self._wandb = None
        if wandb_project and writer:
            self._wandb = _start_wandb(wandb_project, self.path)

    @classmethod
    def new(cls, root: str | Path, name: str, **kwargs: Any) -> RunDir:
        """A fresh folder `root/name-YYYYmmdd-HHMMSS` (never reuses an existing one)."""
        return cls(new_run_path(name, root), **kwargs)

    @classmethod
    def open(
        cls, out: str | Path | None, command: str, config: BaseModel | dict[str, Any], *, resume: bool = False,
        name: str | None = None, wandb_project: str | None = None, ignore: Iterable[str] = (), writer: bool = True,
    ) -> RunDir:
        """Open the run dir of one `command` invocation: `out` exactly (default `runs/<name>-<time>`).

        A fresh or empty folder is created; an existing run of the same command is continued only with
        `resume=True` and only when `config` equals its saved config outside `PLACEMENT_FIELDS` (and `ignore`);
        anything else (a folder of other files, another command's run) is refused, so no user file is ever
        overwritten. Writes `run.json` (command, status) and the resolved config.
        """
        path = Path(out) if out else new_run_path(name or command.replace(" ", "-"))
        if not writer:  # rank 0 checks and creates the folder (it may already hold rank 0's run.json)
            return cls(path, writer=False)
        data = config.model_dump(mode="json") if isinstance(config, BaseModel) else dict(config)
        check_run_target(path, command, resume, data, ignore)
        created = not path.exists() or not any(path.iterdir())
        if created and wandb_project:
            from personalign.settings import wandb_problem

            problem = wandb_problem()
            if problem:
                raise PersonalignError(f"--wandb {wandb_project}: {problem}")
        run = cls(path, wandb_project=wandb_project)
        if created:
            _CREATED.append(run.path)
        _ACTIVE[:] = [(command, run.path)]
        marker = run.path / RUN_FILE
        info = json.loads(marker.read_text(encoding="utf-8")) if marker.is_file() else {
            "command": command, "created_utc": datetime.now(UTC).isoformat(), "resumed_utc": []}
        if not created:
            info["resumed_utc"] = [*info.get("resumed_utc", []), datetime.now(UTC).isoformat()]
        info["status"] = "running"
        atomic_write_json(marker, info)
        run.write_config(data)
        return run

    @property
    def resumed(self) -> bool:
        """True when this folder held results of an earlier invocation when it was opened."""
        return self._earlier > 0 or bool(self._outputs)

    def mark_finished(self) -> None:
        if not self.writer:
            return
        marker = self.path / RUN_FILE
        if marker.is_file():
            info = json.loads(marker.read_text(encoding="utf-8"))
            atomic_write_json(marker, {**info, "status": "finished"})

    def _load_rows(self, name: str) -> list[dict[str, Any]]:
        file = self.path / name
        return read_jsonl(file) if file.exists() else []

    def write_config(self, config: BaseModel | dict[str, Any]) -> None:
        if not self.writer:
            return
        data = config.model_dump(mode="json") if isinstance(config, BaseModel) else config
        atomic_write_yaml(self.path / "config.yaml", data)
        if self._wandb is not None:
            self._wandb.config.update(data, allow_val_change=True)

    def write_env(self, seed: int, device: str | None = None, **extra: Any) -> dict[str, Any]:
        import torch

        if device in (None, "", "auto"):
            # Record where the work actually runs (what "auto" resolves to), not the request.
            device = "cuda" if torch.cuda.is_available() else "cpu"
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
        if self.writer:
            atomic_write_json(self.path / "env.json", env)
        return env

    def log_metrics(self, record: dict[str, Any], step: int | None = None) -> None:
        row = {"time": time.time(), **({"step": step} if step is not None else {}), **record}
        if self._earlier:
            self._drop_replayed(row)
        self._metrics.append(row)
        if not self.writer:
            return
        atomic_write_jsonl(self.path / "metrics.jsonl", self._metrics)
        for listener in _LISTENERS:
            listener(row)
        if self._wandb is not None:
            numeric = {k: v for k, v in record.items() if isinstance(v, int | float)}
            self._wandb.log(numeric, step=step)

    def _drop_replayed(self, row: dict[str, Any]) -> None:
        """A resumed run replays the steps after its last checkpoint: the earlier invocation's rows of the same
        series (same keys and phase) from this step on are replaced, so metrics.jsonl holds each step once."""
        keys, series = set(row) - {"time"}, (row.get("phase"), row.get("kind"))

        def replayed(old: dict[str, Any]) -> bool:
            if set(old) - {"time"} != keys or (old.get("phase"), old.get("kind")) != series:
                return False
            if "step" in row:
                return isinstance(old.get("step"), int | float) and old["step"] >= row["step"]
            return row.get("phase") is not None  # one summary row per phase ("sft_done")

        kept = [old for old in self._metrics[: self._earlier] if not replayed(old)]
        self._metrics = kept + self._metrics[self._earlier:]
        self._earlier = len(kept)

    def add_outputs(self, rows: list[dict[str, Any]]) -> None:
        self._outputs.extend(rows)
        if not self.writer:
            return
        atomic_write_jsonl(self.path / "outputs.jsonl", self._outputs)

    @property
    def metrics(self) -> list[dict[str, Any]]:
        return list(self._metrics)

    @property
    def outputs(self) -> list[dict[str, Any]]:
        return list(self._outputs)

    def write_json(self, name: str, obj: Any) -> Path:
        if not self.writer:
            return self.path / name
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
        raise PersonalignError("--wandb needs the wandb package: pip install 'personalign[wandb]'") from None
    try:
        return wandb.init(project=project, dir=str(run_path), name=run_path.name, reinit=True)
    except wandb.errors.Error as exc:
        raise PersonalignError(f"--wandb {project}: {str(exc).splitlines()[0]} (run `wandb login`, or set "
                               "WANDB_MODE=offline to track without an account)") from None
