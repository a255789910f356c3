"""`personalize`: train a method (sft, dpo, ditto) on a profile into a run dir that `generate --run` loads."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import Field

from personalign.cli.common import ConfigOpt, DeviceOpt, DtypeOpt, ModelOpt, console
from personalign.config import Config, ModelConfig, resolve_config
from personalign.errors import PersonalignError

TRAINED_METHODS = ("sft", "dpo", "ditto", "rlaif")


class PersonalizeConfig(Config):
    """Resolved config of one training run (written to the run dir as config.yaml)."""

    profile: str = Field(..., description="profile YAML/JSON")
    method: str = Field("sft", description="sft | dpo | ditto")
    out: str | None = Field(None, description="run dir to write (default: RUNS/<method>-<time>)")
    runs_root: str = Field("runs", description="parent folder of new run dirs")
    resume: bool = Field(False, description="continue `out` (or the newest RUNS/<method>-*) from its checkpoint")
    quick: bool = Field(False, description="the method's CPU-quick settings (minutes on 2 cores)")
    model: ModelConfig = Field(default_factory=ModelConfig)
    method_config: dict[str, Any] = Field(default_factory=dict, description="fields of the method's own config")
    feedback: str | None = Field(None, description="studio feedback DB: dpo trains on its pairs, ditto/sft on edits")


def _run_dir_path(cfg: PersonalizeConfig) -> Path | None:
    if cfg.out:
        return Path(cfg.out)
    if not cfg.resume:
        return None
    found = sorted(Path(cfg.runs_root).glob(f"{cfg.method}-*"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise PersonalignError(f"--resume: no {cfg.runs_root}/{cfg.method}-* run to resume; pass --out RUN_DIR")
    return found[-1]


def _with_saved_config(cfg: PersonalizeConfig, path: Path) -> PersonalizeConfig:
    """On resume, the interrupted run's saved settings apply; flags given now override them."""
    saved_file = path / "config.yaml"
    if not saved_file.is_file():
        return cfg
    saved = PersonalizeConfig.load(saved_file)
    if saved.method != cfg.method:
        raise PersonalignError(f"--resume: {path} is a {saved.method!r} run, not {cfg.method!r}; pass --method "
                               f"{saved.method}")
    model = cfg.model if cfg.model != ModelConfig() else saved.model
    return cfg.model_copy(update={"model": model, "method_config": {**saved.method_config, **cfg.method_config}})


def train(cfg: PersonalizeConfig, progress: bool = True) -> Path:
    """Fit the method on the profile and write config, env, metrics, adapter and method.json."""
    from personalign.backends.registry import build_backend
    from personalign.methods.base import build_personalizer, method_class
    from personalign.profiles import load_profile
    from personalign.runs import RunDir

    if cfg.method not in TRAINED_METHODS:
        raise PersonalignError(f"--method {cfg.method!r}: personalize trains {', '.join(TRAINED_METHODS)}; "
                               "prompting methods need no training (use generate or compare)")
    profile = load_profile(cfg.profile)
    cls = method_class(cfg.method)
    path = _run_dir_path(cfg)
    if cfg.resume:
        if path is None or not path.is_dir():
            raise PersonalignError(f"--resume: run dir {path} does not exist; pass the --out of the interrupted run")
        cfg = _with_saved_config(cfg, path)
    method_fields = {**(cls.quick_overrides() if cfg.quick else {}), **cfg.method_config}
    if cfg.resume:
        method_fields["resume"] = True
    if cfg.method == "dpo" and method_fields.get("pairs"):
        from personalign.methods.dpo import load_pairs

        load_pairs(method_fields["pairs"])  # fail on a bad pair file before loading any model
    if cfg.feedback:
        from personalign.feedback.training import apply_feedback, read_feedback

        feedback = read_feedback(cfg.method, cfg.feedback, profile, path, cfg.resume)
    run = RunDir(path) if path is not None else RunDir.new(cfg.runs_root, cfg.method)
    if cfg.feedback:
        profile, method_fields = apply_feedback(cfg.method, feedback, profile, method_fields, run.path)
    backend = build_backend(cfg.model)
    personalizer = build_personalizer(cfg.method, backend, method_fields)
    run.write_config(cfg.model_copy(update={"method_config": personalizer.config.to_dict(), "out": str(run.path)}))
    seed = int(getattr(personalizer.config, "seed", 0))
    run.write_env(seed, device=str(getattr(backend, "device", "")))
    if progress:
        console.print(f"[bold]{cfg.method}[/]: training on {profile.name} into {run.path}")
    personalizer.fit(profile, run)
    return run.path


def personalize(
    profile: Annotated[Path | None, typer.Option("--profile", help="profile YAML/JSON")] = None,
    method: Annotated[str | None, typer.Option("--method", help="sft | dpo | ditto | rlaif")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="run dir to write or resume")] = None,
    resume: Annotated[bool | None, typer.Option("--resume", help="continue from the last checkpoint")] = None,
    quick: Annotated[bool | None, typer.Option("--quick/--full", help="CPU-quick method settings")] = None,
    pairs: Annotated[Path | None, typer.Option("--pairs", help="dpo: JSONL of prompt, chosen, rejected")] = None,
    synthetic_data: Annotated[
        Path | None, typer.Option("--synthetic-data", help="sft: reuse this synthetic JSONL")
    ] = None,
    max_steps: Annotated[int | None, typer.Option("--max-steps", help="optimizer steps (sft, dpo)")] = None,
    reward: Annotated[str | None, typer.Option("--reward", help="rlaif: e.g. rm:RUN_DIR,rules:0.5,length:0.2")] = None,
    feedback: Annotated[Path | None, typer.Option("--feedback", help="studio feedback DB to train on")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="training seed")] = None,
    model: ModelOpt = None,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Train a personalized adapter (sft, dpo or ditto) for a profile; `generate --run DIR` then uses it."""
    cfg = resolve_config(
        PersonalizeConfig, config,
        {"profile": str(profile) if profile else None, "method": method, "out": str(out) if out else None,
         "resume": resume, "quick": quick, "model.model": model, "model.dtype": dtype, "model.device": device,
         "method_config.pairs": str(pairs) if pairs else None,
         "method_config.synthetic_data": str(synthetic_data) if synthetic_data else None,
         "method_config.max_steps": max_steps, "method_config.seed": seed, "method_config.reward": reward,
         "feedback": str(feedback) if feedback else None},
    )
    path = train(cfg)
    console.print(f"run dir: [bold]{path}[/]  (try: personalign generate --run {path} --prompt '...')")


def register(app: typer.Typer) -> None:
    app.command()(personalize)
