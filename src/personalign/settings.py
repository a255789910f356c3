"""The one place that reads environment variables (cache and data locations, offline mode)."""

from __future__ import annotations

import os
from pathlib import Path

from personalign.errors import PersonalignError

CACHE_ENV = "PERSONALIGN_CACHE"
DATA_ENV = "PERSONALIGN_DATA"


def cache_dir() -> Path:
    """Where converted models and embedding caches live (`~/.cache/personalign` by default)."""
    root = os.environ.get(CACHE_ENV) or str(Path.home() / ".cache" / "personalign")
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_dir(explicit: str | Path | None = None) -> Path:
    """Root of the public data sets: an explicit path, then $PERSONALIGN_DATA, then ../shared/datasets.

    Raises a one-line error naming both ways to point at the data when none exists.
    """
    candidates: list[Path] = []
    if explicit:
        candidates.append(Path(explicit).expanduser())
    elif os.environ.get(DATA_ENV):
        candidates.append(Path(os.environ[DATA_ENV]).expanduser())
    else:
        # The checkout's sibling folder, as laid out on the development machines.
        here = Path(__file__).resolve()
        candidates += [Path.cwd() / ".." / "shared" / "datasets", here.parents[3] / "shared" / "datasets"]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    raise PersonalignError(
        f"data sets not found (looked in {', '.join(str(c) for c in candidates)}); "
        f"pass --data-dir PATH or set {DATA_ENV}=PATH to the folder holding ditto/, dsp/, ..."
    )


LAUNCHED_ENV = "PERSONALIGN_LAUNCHED"  # set by `personalize --engine accelerate` for the processes it starts


def launched_process() -> tuple[int, int, int] | None:
    """(rank, local rank, world size) when this process is one of several started by `accelerate launch`,
    torchrun or deepspeed (they set RANK / LOCAL_RANK / WORLD_SIZE), or by personalign's own relaunch; None
    for a plain process. A launched `personalize` must not relaunch itself."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env.get("LOCAL_RANK", env["RANK"])), int(env["WORLD_SIZE"])
    if env.get(LAUNCHED_ENV) or env.get("ACCELERATE_DYNAMO_BACKEND"):  # accelerate's one-process launch
        return 0, 0, 1
    return None


def hub_offline() -> bool:
    """True when the Hugging Face hub must not be contacted (HF_HUB_OFFLINE set)."""
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")


def env_secret(name: str) -> str | None:
    """The value of the environment variable `name` (an API key a config points at by name), or None."""
    return os.environ.get(name) or None


RUNS_ENV = "PERSONALIGN_RUNS"


def runs_root() -> Path:
    """Parent folder of auto-named run dirs: $PERSONALIGN_RUNS, else ./runs."""
    return Path(os.environ.get(RUNS_ENV) or "runs").expanduser()


def wandb_problem() -> str | None:
    """Why `--wandb` cannot start here (None when it can): checked before any run dir is created."""
    import importlib.util

    if importlib.util.find_spec("wandb") is None:
        return "needs the wandb package: pip install 'personalign[wandb]'"
    if os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun") or os.environ.get(
            "WANDB_API_KEY"):
        return None
    netrc = Path(os.environ.get("NETRC") or Path.home() / ".netrc").expanduser()
    try:
        if "api.wandb.ai" in netrc.read_text(encoding="utf-8"):
            return None
    except OSError:
        pass
    return "not logged in to Weights & Biases; run `wandb login`, or set WANDB_MODE=offline to track locally"


def quiet_third_party() -> None:
    """Silence what libraries print on every run but personalign's users cannot act on: transformers' per-load
    "Loading weights" bars and info logs, and peft's probe of the deprecated `is_gradient_checkpointing`
    (PeftModel reads it on every adapter load; the FutureWarning is transformers' note to peft). Our own
    progress bars are separate and stay. Idempotent."""
    import warnings

    warnings.filterwarnings("ignore", message=r".*`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # transformers is a dependency; tolerate a broken install here, fail where it is used
        return
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
