"""`personalize`: train a method (sft, dpo, ditto, rlaif) on a profile into a run dir that `generate --run` loads."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import Field

from personalign.cli.common import (
    ConfigOpt,
    DeviceOpt,
    DtypeOpt,
    ModelOpt,
    OutOpt,
    ResumeOpt,
    console,
    err_console,
    resolve_run_config,
    takes_config,
)
from personalign.config import Config, ModelConfig
from personalign.errors import PersonalignError

TRAINED_METHODS = ("sft", "dpo", "ditto", "rlaif")
# Methods whose every client-side step is the same on each process of `--engine accelerate`: rlaif is not yet
# (its reward terms run judges and reward models once per process, which need not agree).
DATA_PARALLEL_METHODS = ("sft", "dpo", "ditto")


class PersonalizeConfig(Config):
    """Resolved config of one training run (written to the run dir as config.yaml)."""

    profile: str = Field(..., description="profile YAML/JSON")
    method: str = Field("sft", description="sft | dpo | ditto | rlaif")
    out: str | None = Field(None, description="the run dir to write (default: runs/<method>-<UTC time>)")
    resume: bool = Field(False, description="continue the run in `out` from its last checkpoint")
    quick: bool = Field(False, description="the method's CPU-quick settings (minutes on 2 cores)")
    model: ModelConfig = Field(default_factory=ModelConfig)
    method_config: dict[str, Any] = Field(default_factory=dict, description="fields of the method's own config")
    feedback: str | None = Field(None, description="studio feedback DB: dpo trains on its pairs, ditto/sft on edits")
    num_processes: int | None = Field(None, ge=1, description="engine accelerate: data-parallel processes to "
                                      "launch (default: the accelerate config's, else 1)")
    accelerate_config: str | None = Field(None, description="engine accelerate: an `accelerate launch` config "
                                          "YAML (see configs/accelerate/)")

    @property
    def engine(self) -> str:
        """The training engine (the method's `engine` field, set by --engine)."""
        return str(self.method_config.get("engine", "local"))


def check_method(method: str) -> None:
    from personalign.config import suggest

    if method not in TRAINED_METHODS:
        raise PersonalignError(f"--method {method!r}{suggest(method, TRAINED_METHODS)}: personalize trains "
                               f"{', '.join(TRAINED_METHODS)}; prompting methods need no training (use generate or "
                               "compare)")


# Flags that set method_config fields, for errors in the user's words.
METHOD_FLAGS = {"pairs": "--pairs", "synthetic_data": "--synthetic-data", "max_steps": "--max-steps",
                "seed": "--seed", "reward": "--reward", "engine": "--engine"}


def check_launch(cfg: PersonalizeConfig) -> None:
    """Refuse, in one line, engine settings that do not go together (before anything is created or loaded)."""
    from personalign.settings import launched_process

    if cfg.engine != "accelerate":
        for value, flag in ((cfg.num_processes, "--num-processes"), (cfg.accelerate_config, "--accelerate-config")):
            if value is not None:
                raise PersonalignError(f"{flag}: only used with --engine accelerate; add --engine accelerate "
                                       f"(or drop {flag})")
        launched = launched_process()
        if launched is not None and launched[2] > 1:
            raise PersonalignError(f"this is one of {launched[2]} processes started by a launcher, but --engine is "
                                   f"{cfg.engine}: every process would train alone into the same run dir; pass "
                                   "--engine accelerate")
        return
    if cfg.method not in DATA_PARALLEL_METHODS:
        raise PersonalignError(f"--engine accelerate: --method {cfg.method} cannot run data-parallel yet (its "
                               "reward terms would run once per process); use --engine local, or one of "
                               f"{', '.join(DATA_PARALLEL_METHODS)}")
    if cfg.feedback:
        raise PersonalignError("--feedback: not supported with --engine accelerate yet (its training files are "
                               "written into the run dir before training starts); use --engine local")
    if cfg.model.backend != "hf":
        raise PersonalignError(f"--engine accelerate trains a local model; model.backend is {cfg.model.backend!r}: "
                               "use backend hf")
    if cfg.accelerate_config:
        from personalign.engines.launch import check_accelerate_config

        check_accelerate_config(cfg.accelerate_config)


def _check_method_fields(method: str, config_class: type, fields: dict[str, Any]) -> None:
    """Bad or unused method fields fail before the run dir exists; a flag the method ignores is an error."""
    from pydantic import ValidationError

    from personalign.config import format_validation_error

    unused = [f for f in fields if f not in config_class.model_fields]
    if unused:
        named = ", ".join(METHOD_FLAGS.get(f, f"method_config.{f}") for f in unused)
        raise PersonalignError(f"{named}: not used by --method {method}; drop it (or pick the method it is for)")
    try:
        config_class.model_validate(fields)
    except ValidationError as exc:
        flags = {f: METHOD_FLAGS[f] for f in fields if f in METHOD_FLAGS}
        raise PersonalignError(format_validation_error(exc, f"--method {method}", flags)) from None


# Below this many training rows SFT mostly memorizes them and no held-out set can mean anything.
FEW_ROWS = 8


def report_data(row: dict[str, Any], n_demos: int) -> None:
    """Say what the method trains on as soon as it is known (before the first step): rows by source, synthetic
    candidates kept and rejected by check, and a warning when that is too little."""
    if row.get("phase") != "synthetic":
        return
    rejected = ", ".join(f"{k.removeprefix('check:')} {v}" for k, v in (row.get("rejected") or {}).items()) or "none"
    kept = int(row.get("kept") or 0)
    err_console.print(f"synthetic: {row.get('generated', 0)} generated, {row.get('repaired', 0)} repaired, rejected: "
                      f"{rejected}; kept {kept} → training on {n_demos + kept} rows ({n_demos} demonstrations + "
                      f"{kept} synthetic)", highlight=False)
    if n_demos + kept < FEW_ROWS:
        err_console.print(f"warning: {n_demos + kept} training rows is below {FEW_ROWS}: the adapter will mostly "
                          "memorize them; add demonstrations, raise synthetic.n_candidates, or use a stronger "
                          "synthetic.teacher", highlight=False)


def resume_note(path: Path) -> str:
    """What a resumed training run reuses: the last checkpoint, or nothing."""
    from personalign.methods.training import list_checkpoints

    found = sorted(path.rglob("checkpoints"))
    last = [c for root in found for c in list_checkpoints(root.parent)]
    if (path / "method.json").is_file():
        return f"resume: {path.name} finished training earlier; steps already done are skipped"
    if last:
        return f"resume: continuing from {last[-1].relative_to(path)}; earlier steps are skipped"
    return "resume: no checkpoint was saved yet; training starts at step 0"


def with_engine_backend(cfg: PersonalizeConfig, engine: str | None) -> PersonalizeConfig:
    """`--engine tinker` trains on the service, so the model is the service's (backend tinker); a model on the
    service trains nowhere else."""
    if engine == "tinker":  # key and service checked before a run dir or anything else exists
        from personalign.engines.tinker import check_service

        settings = cfg.model.tinker
        check_service(settings.base_url, settings.api_key_env, settings.timeout_s)
    if engine == "tinker" and cfg.model.backend != "tinker":
        if cfg.model.backend == "openai":
            raise PersonalignError("--engine tinker: the model runs on the Tinker service; drop model.backend: openai")
        return cfg.model_copy(update={"model": cfg.model.model_copy(update={"backend": "tinker"})})
    if cfg.model.backend == "tinker" and engine not in (None, "tinker"):
        raise PersonalignError(f"--engine {engine}: model.backend tinker trains only with --engine tinker")
    if cfg.model.backend == "tinker" and engine is None:
        raise PersonalignError("model.backend: tinker: pass --engine tinker (training then runs on the service)")
    return cfg


def _checked(cfg: PersonalizeConfig) -> tuple[PersonalizeConfig, Any, dict[str, Any], Any]:
    """(config with the engine's backend, profile, method fields, feedback) after every check that needs no
    model: bad input fails here."""
    from personalign.methods.base import method_class
    from personalign.profiles import load_profile

    check_method(cfg.method)
    check_launch(cfg)
    profile = load_profile(cfg.profile)
    cls = method_class(cfg.method)
    method_fields = {**(cls.quick_overrides() if cfg.quick else {}), **cfg.method_config}
    if cfg.resume:
        method_fields["resume"] = True
    if cfg.method == "dpo" and method_fields.get("pairs"):
        from personalign.methods.dpo import load_pairs

        load_pairs(method_fields["pairs"])  # fail on a bad pair file before loading any model
    _check_method_fields(cfg.method, cls.config_class, method_fields)
    cfg = with_engine_backend(cfg, method_fields.get("engine"))
    feedback = None
    if cfg.feedback:
        from personalign.feedback.training import read_feedback

        feedback = read_feedback(cfg.method, cfg.feedback, profile, Path(cfg.out) if cfg.out else None, cfg.resume)
    return cfg, profile, method_fields, feedback


def launch_processes(cfg: PersonalizeConfig) -> int:
    """Run this training as `cfg.num_processes` data-parallel processes (`accelerate launch`); their exit code.

    The processes get the resolved config as a file (so every flag reaches each one unchanged) and a fixed run
    dir (each would otherwise name its own by the clock). Rank 0 writes the run dir and shows progress.
    """
    import tempfile

    from personalign.engines.launch import relaunch
    from personalign.io import atomic_write_yaml
    from personalign.runs import new_run_path

    _checked(cfg)
    out = cfg.out or str(new_run_path(cfg.method))
    with tempfile.TemporaryDirectory(prefix="personalign-launch-") as tmp:
        config_file = atomic_write_yaml(Path(tmp) / "personalize.yaml",
                                        cfg.model_copy(update={"out": out}).model_dump(mode="json"))
        return relaunch(["personalize", "--config", str(config_file)], cfg.num_processes, cfg.accelerate_config)


def _quiet() -> None:
    """A non-main process of a multi-process run prints nothing (no progress, notes or errors): rank 0 says
    everything once. A crash keeps its traceback (that goes to stderr directly)."""
    from personalign.progress import silence

    silence()
    console.quiet = err_console.quiet = True


def _place_model(model: ModelConfig, local_rank: int, world: int) -> ModelConfig:
    """Each process of a multi-process run on GPUs gets its own GPU (cuda:LOCAL_RANK)."""
    if world == 1 or model.device not in ("auto", "cuda"):
        return model
    import torch

    if not torch.cuda.is_available():
        return model
    return model.model_copy(update={"device": f"cuda:{local_rank}"})


def train(cfg: PersonalizeConfig, progress: bool = True) -> Path:
    """Fit the method on the profile and write config, env, metrics, adapter and method.json.

    In a process started by `accelerate launch` (see `launch_processes`) only rank 0 writes the run dir and
    shows progress; the other processes read it (checkpoints on resume) and train their shard of each batch.
    """
    from personalign.backends.registry import build_backend
    from personalign.io import forbid_writes
    from personalign.methods.base import build_personalizer
    from personalign.runs import RunDir, add_metrics_listener
    from personalign.settings import launched_process

    rank, local_rank, world = launched_process() or (0, 0, 1)
    main = rank == 0
    if not main:
        _quiet()
    cfg, profile, method_fields, feedback = _checked(cfg)
    if world > 1 and not cfg.out:
        raise PersonalignError(f"--out: required in a run of {world} processes (each must write into the same "
                               "run dir); pass --out DIR")
    progress = progress and main
    run = RunDir.open(cfg.out, "personalize", cfg, resume=cfg.resume, name=cfg.method, writer=main)
    if not main:
        forbid_writes(run.path)
    if feedback is not None:
        from personalign.feedback.training import apply_feedback

        profile, method_fields = apply_feedback(cfg.method, feedback, profile, method_fields, run.path)
    backend = build_backend(_place_model(cfg.model, local_rank, world))
    personalizer = build_personalizer(cfg.method, backend, method_fields)
    run.write_config(cfg.model_copy(update={"method_config": personalizer.config.to_dict(), "out": str(run.path)}))
    seed = int(getattr(personalizer.config, "seed", 0))
    distributed = {}
    if cfg.engine == "accelerate":  # how accelerate launch distributed the processes: ddp, fsdp, deepspeed-zeroN
        from personalign.engines.launch import distributed_kind

        distributed["distributed"] = distributed_kind()
    run.write_env(seed, device=str(getattr(backend, "device", "")), engine=cfg.engine, processes=world, **distributed)
    if progress:
        verb = "resuming" if cfg.resume else "training"
        console.print(f"[bold]{cfg.method}[/]: {verb} on {profile.name} into {run.path}")
        if cfg.resume:
            err_console.print(resume_note(run.path), highlight=False)
        err_console.print(f"data: {len(profile.demonstrations)} demonstrations from the profile", highlight=False)
        add_metrics_listener(lambda row: report_data(row, len(profile.demonstrations)))
    try:
        personalizer.fit(profile, run)
    finally:
        if not main:
            forbid_writes(None)
    run.mark_finished()
    return run.path


def _resolve_on_other_rank(config: Path | None, overrides: dict[str, Any]) -> PersonalizeConfig:
    """The config as a non-main process of a launched run resolves it: rank 0 checks and creates the run dir
    (it may already hold rank 0's files, so the new-folder check would refuse it), this one only reads it."""
    from personalign.config import resolve_config
    from personalign.io import read_yaml

    cfg = resolve_config(PersonalizeConfig, config, overrides)
    saved = Path(cfg.out) / "config.yaml" if cfg.out else None
    if cfg.resume and saved is not None and saved.is_file():
        cfg = resolve_config(PersonalizeConfig, config, overrides, defaults=read_yaml(saved))
    return cfg


@takes_config("personalign.cli.personalize:PersonalizeConfig", engine="method_config.engine")
def personalize(
    profile: Annotated[Path | None, typer.Option("--profile", help="profile YAML/JSON")] = None,
    method: Annotated[str | None, typer.Option("--method", help="sft | dpo | ditto | rlaif")] = None,
    out: OutOpt = None,
    resume: ResumeOpt = None,
    quick: Annotated[bool | None, typer.Option("--quick/--full", help="CPU-quick method settings")] = None,
    pairs: Annotated[Path | None, typer.Option("--pairs", help="dpo: JSONL of prompt, chosen, rejected")] = None,
    synthetic_data: Annotated[
        Path | None, typer.Option("--synthetic-data", help="sft: reuse this synthetic JSONL")
    ] = None,
    max_steps: Annotated[int | None, typer.Option(
        "--max-steps", help="optimizer steps (sft, dpo, rlaif)", show_default="the method's")] = None,
    reward: Annotated[str | None, typer.Option(
        "--reward", help="rlaif: e.g. rm:RUN_DIR,rules:0.5,length:0.2", show_default="the method's")] = None,
    feedback: Annotated[Path | None, typer.Option("--feedback", help="studio feedback DB to train on")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="training seed", show_default="0")] = None,
    engine: Annotated[str | None, typer.Option(
        "--engine", help="local | accelerate (data-parallel processes through accelerate launch) | tinker (a "
        "Tinker-API service; --model as the service names it)", show_default="local")] = None,
    tinker_url: Annotated[str | None, typer.Option(
        "--tinker-url", help="Tinker service URL (e.g. a local skyrl-tx server)",
        show_default="TINKER_BASE_URL or the Tinker cloud")] = None,
    num_processes: Annotated[int | None, typer.Option(
        "--num-processes", help="--engine accelerate: processes to launch",
        show_default="the accelerate config's, else 1")] = None,
    accelerate_config: Annotated[Path | None, typer.Option(
        "--accelerate-config", help="--engine accelerate: accelerate config YAML (configs/accelerate/)")] = None,
    model: ModelOpt = None,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Train a personalized adapter (sft, dpo, ditto or rlaif) for a profile; `generate --run DIR` then uses it."""
    from personalign.settings import launched_process

    if method is not None:
        check_method(method)
    overrides = {
        "profile": str(profile) if profile else None, "method": method, "out": str(out) if out else None,
        "resume": resume, "quick": quick, "model.model": model, "model.dtype": dtype, "model.device": device,
        "method_config.pairs": str(pairs) if pairs else None,
        "method_config.synthetic_data": str(synthetic_data) if synthetic_data else None,
        "method_config.max_steps": max_steps, "method_config.seed": seed, "method_config.reward": reward,
        "method_config.engine": engine, "model.tinker.base_url": tinker_url,
        "feedback": str(feedback) if feedback else None,
        "num_processes": num_processes, "accelerate_config": str(accelerate_config) if accelerate_config else None}
    launched = launched_process()
    if launched is not None and launched[0] != 0:
        _quiet()
        cfg = _resolve_on_other_rank(config, overrides)
    else:
        cfg = resolve_run_config(PersonalizeConfig, "personalize", config, overrides)
    if cfg.engine == "accelerate" and launched is None:
        code = launch_processes(cfg)
        if code:
            raise typer.Exit(code)
        return
    path = train(cfg)
    console.print(f"run dir: [bold]{path}[/]  (try: personalign generate --run {path} --prompt '...')")


def register(app: typer.Typer) -> None:
    app.command()(personalize)
