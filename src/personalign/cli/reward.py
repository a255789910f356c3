"""`personalign reward train`: label preference pairs (rules / llm / mix / a file) and train a reward model on them.

`--kind bt` (default) trains a Bradley-Terry scalar reward model (`judges.reward_model`); `--kind gen-rm`
trains a generative judge that answers A or B (`judges.generative`, the assignment's preference model).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import Field

from personalign.cli.common import (
    ConfigOpt,
    DataDirOpt,
    DeviceOpt,
    OutOpt,
    PersonalignTyper,
    ResumeOpt,
    console,
    given_fields,
    refuse_unused,
    resolve_run_config,
    takes_config,
)
from personalign.config import Config, ModelConfig
from personalign.errors import PersonalignError
from personalign.judges.preference_pipeline import PreferenceConfig
from personalign.judges.reward_model import RewardModelConfig

reward_app = PersonalignTyper(help="Reward models: train on labeled or judge-labeled preference pairs.",
                         no_args_is_help=True)
PIPELINE_LABELS = ("rules", "llm", "mix")


class RewardTrainConfig(Config):
    """Resolved config of one `reward train` run."""

    labels: str = Field("rules", description="rules | llm | mix (label sampled pairs; needs --profile), "
                                             "a built-in labeled set name, or a JSONL file of prompt/chosen/rejected")
    profile: str | None = Field(None, description="profile whose prompts are sampled and judged")
    data_dir: str | None = None
    limit: int | None = Field(None, ge=2, description="use N pairs of a labeled set or file")
    model: ModelConfig = Field(default_factory=ModelConfig, description="policy that samples the pairs (and llm judge)")
    preference: PreferenceConfig = Field(default_factory=PreferenceConfig)
    rm: RewardModelConfig = Field(default_factory=RewardModelConfig)
    out: str | None = Field(None, description="the run dir to write (default: runs/<name>-<UTC time>)")
    name: str = Field("reward", description="prefix of the default run dir's name")
    resume: bool = Field(False, description="continue the run in `out` from its last checkpoint and saved pairs")


def training_pairs(cfg: RewardTrainConfig, run: Any) -> list[Any]:
    from personalign.judges.labeled_sets import load_labeled
    from personalign.judges.preference_pipeline import build_preferences
    from personalign.profiles import load_profile

    if cfg.labels in PIPELINE_LABELS:
        if not cfg.profile:
            raise PersonalignError(
                f"--labels {cfg.labels} samples and judges the profile's prompts: pass --profile PATH"
            )
        preference = cfg.preference.model_copy(update={"labels": cfg.labels})
        pairs, report = build_preferences(load_profile(cfg.profile), cfg.model, preference, run, resume=cfg.resume)
        run.log_metrics({"phase": "preferences", **{k: v for k, v in report.items() if isinstance(v, int | float)}})
        console.print(f"preference pairs: {report}")
        return pairs
    return load_labeled(cfg.labels, cfg.data_dir, seed=cfg.rm.seed, limit=cfg.limit)


def run_reward_training(cfg: RewardTrainConfig, progress: bool = True) -> tuple[Path, dict[str, Any]]:
    from personalign.judges.reward_model import train_reward_model
    from personalign.runs import RunDir

    check_inputs(cfg)
    run = RunDir.open(cfg.out, "reward train", cfg, resume=cfg.resume, name=cfg.name)
    run.write_env(cfg.rm.seed, device=None if cfg.rm.device == "auto" else cfg.rm.device)
    pairs = training_pairs(cfg, run)
    if cfg.rm.kind == "gen-rm":
        from personalign.judges.generative import train_generative_judge

        rubric = None
        if cfg.labels in PIPELINE_LABELS:  # pipeline pairs were judged against the profile's rubric
            from personalign.judges.llm import profile_rubric
            from personalign.profiles import load_profile

            rubric = profile_rubric(load_profile(cfg.profile))  # type: ignore[arg-type]
        _, summary = train_generative_judge(pairs, cfg.rm, run, rubric=rubric, resume=cfg.resume, progress=progress)
    else:
        _, summary = train_reward_model(pairs, cfg.rm, run, resume=cfg.resume, progress=progress)
    run.mark_finished()
    return run.path, summary


def check_inputs(cfg: RewardTrainConfig) -> None:
    """Everything that can be wrong with the inputs, before the run dir or any model exists."""
    from personalign.judges.labeled_sets import load_labeled
    from personalign.profiles import load_profile

    if cfg.rm.kind == "gen-rm":
        from personalign.judges.generative import check_config

        check_config(cfg.rm)
    if cfg.labels in PIPELINE_LABELS:
        if not cfg.profile:
            raise PersonalignError(
                f"--labels {cfg.labels} samples and judges the profile's prompts: pass --profile PATH"
            )
        load_profile(cfg.profile)
    else:
        load_labeled(cfg.labels, cfg.data_dir, seed=cfg.rm.seed, limit=cfg.limit)  # names and files checked now


# Options that each kind of labels ignores (pipeline labels sample pairs; a set or file comes labeled).
PIPELINE_ONLY = {"profile": "--profile", "model.model": "--model", "preference": "--pairs-per-prompt"}
LABELED_ONLY = {"limit": "--limit"}


@reward_app.command("train")
@takes_config("personalign.cli.reward:RewardTrainConfig", batch_size="rm.batch_size", lr="rm.learning_rate",
              device="rm.device", seed="rm.seed")
def train(
    labels: Annotated[str | None, typer.Option("--labels", help="rules | llm | mix | SET_NAME | FILE.jsonl")] = None,
    kind: Annotated[str | None, typer.Option("--kind", help="bt (Bradley-Terry scalar head) | gen-rm (a "
                                             "generative judge answering A or B)")] = None,
    profile: Annotated[Path | None, typer.Option("--profile", help="profile YAML (for rules/llm/mix labels)")] = None,
    backbone: Annotated[str | None, typer.Option("--backbone", help="minilm | default | causal-LM folder")] = None,
    lora: Annotated[bool | None, typer.Option("--lora/--full", help="LoRA adapters or all weights")] = None,
    max_steps: Annotated[int | None, typer.Option("--max-steps", help="-1 = all epochs")] = None,
    epochs: Annotated[float | None, typer.Option("--epochs", help="passes over the training pairs")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="pairs per step")] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="learning rate")] = None,
    eval_every: Annotated[int | None, typer.Option("--eval-every", help="held-out accuracy every N steps")] = None,
    save_every: Annotated[int | None, typer.Option("--save-every", help="checkpoint every N steps")] = None,
    max_length: Annotated[int | None, typer.Option("--max-length", help="tokens per (prompt, response)")] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="N pairs of a labeled set or file")] = None,
    pairs_per_prompt: Annotated[int | None, typer.Option("--pairs-per-prompt", help="sampled pairs per prompt")] = None,
    model: Annotated[str | None, typer.Option("--model", help="policy / llm-judge model")] = None,
    device: DeviceOpt = None,
    data_dir: DataDirOpt = None,
    seed: Annotated[int | None, typer.Option("--seed", help="random seed (data split, training, bootstrap)")] = None,
    out: OutOpt = None,
    resume: ResumeOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Train a reward model (Bradley-Terry or generative judge); held-out accuracy every N steps, checkpoints,
    --resume."""
    overrides = {
        "labels": labels, "rm.kind": kind, "profile": str(profile) if profile else None, "rm.backbone": backbone,
        "rm.lora": lora,
        "rm.max_steps": max_steps, "rm.epochs": epochs, "rm.batch_size": batch_size, "rm.learning_rate": lr,
        "rm.eval_every": eval_every, "rm.save_every": save_every, "rm.max_length": max_length, "limit": limit,
        "preference.pairs_per_prompt": pairs_per_prompt, "model.model": model, "model.device": device,
        "rm.device": device, "data_dir": str(data_dir) if data_dir else None, "rm.seed": seed,
        "out": str(out) if out else None, "resume": resume,
    }
    cfg = resolve_run_config(RewardTrainConfig, "reward train", config, overrides, flags={
        "rm.learning_rate": "--lr", "preference.pairs_per_prompt": "--pairs-per-prompt", "rm.seed": "--seed"})
    pipeline = cfg.labels in PIPELINE_LABELS
    refuse_unused(given_fields(config, overrides), LABELED_ONLY if pipeline else PIPELINE_ONLY,
                  f"with --labels {cfg.labels}" + ("" if pipeline else " (its pairs come labeled)"))
    path, summary = run_reward_training(cfg)
    console.print(
        f"reward model: {summary['train_pairs']} train pairs, held-out accuracy "
        f"{summary['heldout_accuracy_before']:.0%} → {summary['heldout_accuracy']:.0%} over {summary['heldout_pairs']} "
        f"pairs after {summary['steps']} steps"
        + (f", position bias {summary['heldout_position_bias_before']:.0%} → {summary['heldout_position_bias']:.0%}"
           if "heldout_position_bias" in summary else "")
    )
    as_judge = "gen-rm" if cfg.rm.kind == "gen-rm" else "rm"
    console.print(f"run dir: [bold]{path}[/]  (use as --judge {as_judge} --rm {path}, or --reward {as_judge}:{path})")


def register(app: typer.Typer) -> None:
    app.add_typer(reward_app, name="reward")
