"""`personalign judge validate`: how far a judge (rules, llm, rm, gen-rm) agrees with labeled preference pairs."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from pydantic import Field, model_validator
from rich.table import Table

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
    split_csv,
    takes_config,
)
from personalign.config import Config, ModelConfig
from personalign.errors import PersonalignError

judge_app = PersonalignTyper(help="LLM-as-judge, rule and reward-model judges.", no_args_is_help=True)


class JudgeValidateConfig(Config):
    """Resolved config of one `judge validate` run."""

    judge: Literal["rules", "llm", "rm", "gen-rm"] = Field(
        "rules", description="rules | llm | rm (a Bradley-Terry run) | gen-rm (a generative-judge run); "
                             "rm:RUN_DIR / gen-rm:RUN_DIR also set `rm`")
    data: list[str] = Field(default_factory=lambda: ["prometheus-hhh"],
                            description="built-in sets (prometheus-hhh, autoj, llmbar, mtbench-human, ...) or files")
    data_dir: str | None = Field(None, description="folder of the shared data sets (default: $PERSONALIGN_DATA)")
    limit: int | None = Field(None, ge=1, description="seeded random sample of N pairs per set")
    model: ModelConfig = Field(default_factory=ModelConfig, description="the llm judge's model")
    rm: str | None = Field(None, description="run dir of a trained reward model (judge rm or gen-rm)")
    profile: str | None = Field(None, description="judge with this profile's rubric and constraints")
    max_new_tokens: int = Field(128, ge=8, description="llm judge answer length")
    ties: bool = Field(False, description="llm judge: offer 'tie' in the pairwise prompt (off: Prometheus' "
                                          "official A/B format, where a 'tie' answer is unparseable)")
    n_boot: int = Field(1000, ge=10)
    seed: int = 0
    out: str | None = Field(None, description="the run dir to write (default: runs/<name>-<judge>-<UTC time>)")
    name: str = Field("judge-validate", description="prefix of the default run dir's name")
    resume: bool = Field(False, description="continue the run in `out`: finished sets are reused")

    @model_validator(mode="before")
    @classmethod
    def _judge_with_run_dir(cls, data: Any) -> Any:
        """`judge: gen-rm:RUN_DIR` (the RLAIF reward-term spelling) = `judge: gen-rm` + `rm: RUN_DIR`."""
        if isinstance(data, dict) and isinstance(data.get("judge"), str):
            kind, sep, path = data["judge"].partition(":")
            if sep and kind in TRAINED_JUDGES and path:
                if data.get("rm") not in (None, path):
                    raise ValueError(f"judge {data['judge']!r} and rm {data['rm']!r} name two run dirs; give one")
                data = {**data, "judge": kind, "rm": path}
        return data


TRAINED_JUDGES = ("rm", "gen-rm")


def build_validation_judge(cfg: JudgeValidateConfig) -> Any:
    from personalign.judges.base import RulesJudge

    if cfg.judge == "rules":
        return RulesJudge()
    if cfg.judge == "rm":
        from personalign.judges.reward_model import RewardModel, RMJudge

        return RMJudge(RewardModel.load(_run_dir(cfg), device=cfg.model.device))
    if cfg.judge == "gen-rm":
        from personalign.judges.generative import GenerativeJudge

        return GenerativeJudge.load(_run_dir(cfg), device=cfg.model.device)
    from personalign.backends.registry import build_backend
    from personalign.judges.llm import LLMJudge

    return LLMJudge(build_backend(cfg.model), max_new_tokens=cfg.max_new_tokens, ties=cfg.ties)


def _run_dir(cfg: JudgeValidateConfig) -> str:
    if not cfg.rm:
        command = "personalign reward train" + (" --kind gen-rm" if cfg.judge == "gen-rm" else "")
        raise PersonalignError(f"--judge {cfg.judge} needs --rm RUN_DIR (the folder a `{command}` wrote)")
    return cfg.rm


def run_validation(cfg: JudgeValidateConfig, progress: bool = True) -> tuple[Path, dict[str, Any]]:
    """Validate the judge on every set; results per set in summary.json, per pair in outputs.jsonl."""
    from personalign.judges.labeled_sets import load_labeled
    from personalign.judges.validate import validate_judge
    from personalign.profiles import load_profile
    from personalign.runs import RunDir, seed_everything

    seed_everything(cfg.seed)
    # Every input is read before the run dir exists: a typo'd set name or a bad profile leaves nothing behind.
    profile = load_profile(cfg.profile) if cfg.profile else None
    datasets = {name: load_labeled(name, cfg.data_dir, seed=cfg.seed, limit=cfg.limit) for name in cfg.data}
    if cfg.judge in TRAINED_JUDGES:
        from personalign.splits import assert_disjoint

        # A trained judge is never scored on prompts it trained on (its run dir's training_data.json).
        for name, pairs in datasets.items():
            assert_disjoint(_run_dir(cfg), [p.prompt for p in pairs], who=f"judge {cfg.judge} {cfg.rm} (set {name})")
    run = RunDir.open(cfg.out, "judge validate", cfg, resume=cfg.resume, name=f"{cfg.name}-{cfg.judge}")
    summary: dict[str, Any] = run.read_json("summary.json") if (run.path / "summary.json").is_file() else {}
    judge = None
    for name, pairs in datasets.items():
        if name in summary:
            if progress:
                console.print(f"{name}: done in the earlier run, reused", highlight=False)
            continue  # finished in an earlier, interrupted run
        judge = judge or build_validation_judge(cfg)
        if judge is not None and not (run.path / "env.json").is_file():
            run.write_env(cfg.seed, device=_device(cfg))
        result, rows = validate_judge(judge, pairs, profile, n_boot=cfg.n_boot, seed=cfg.seed, progress=progress)
        summary[name] = result
        run.add_outputs([{"set": name, **row} for row in rows])
        run.log_metrics({"set": name, **{k: v for k, v in result.items() if isinstance(v, int | float)}})
        run.write_json("summary.json", summary)
    if not (run.path / "env.json").is_file():
        run.write_env(cfg.seed, device=_device(cfg))
    run.mark_finished()
    return run.path, summary


def _device(cfg: JudgeValidateConfig) -> str | None:
    """Where the judge runs: rules need no device; model judges record what `auto` resolved to."""
    if cfg.judge == "rules":
        return "cpu"
    return None if cfg.model.device == "auto" else cfg.model.device


# Options each judge ignores: giving one is an error, not a silent no-op.
MODE_OPTIONS: dict[str, dict[str, str]] = {
    "rules": {"model": "--model/--device", "rm": "--rm", "max_new_tokens": "--max-new-tokens", "ties": "--ties"},
    "llm": {"rm": "--rm"},
    "rm": {"model.model": "--model", "max_new_tokens": "--max-new-tokens", "ties": "--ties"},
    "gen-rm": {"model.model": "--model", "max_new_tokens": "--max-new-tokens", "ties": "--ties"},
}


def _fmt(value: float, ci: tuple[float, float] | None = None, pct: bool = True) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    text = f"{value:.0%}" if pct else f"{value:.2f}"
    if ci and None not in ci:
        text += f" [{ci[0]:.0%}, {ci[1]:.0%}]" if pct else f" [{ci[0]:.2f}, {ci[1]:.2f}]"
    return text


def show_validation(summary: dict[str, Any], judge: str) -> None:
    table = Table(title=f"judge {judge}: agreement with labeled pairs (95 % bootstrap CI)",
                  caption="accuracy counts ties and unparseable verdicts as wrong; 'decided' is accuracy on the "
                          "pairs where the judge named a winner")
    for column in ["set", "n", "accuracy", "decided", "kappa", "ties", "unparseable", "position bias"]:
        table.add_column(column, justify="left" if column == "set" else "right")
    for name, r in summary.items():
        ci = r.get("ci95", {})
        table.add_row(
            name, str(r["n"]), _fmt(r["accuracy"], ci.get("accuracy")),
            _fmt(r.get("accuracy_decided"), ci.get("accuracy_decided")), _fmt(r["kappa"], ci.get("kappa"), pct=False),
            _fmt(r["tie_rate"]), _fmt(r["unparseable_rate"]), _fmt(r["position_bias_rate"]),
        )
    console.print(table)


@judge_app.command("validate")
@takes_config("personalign.cli.judge:JudgeValidateConfig")
def validate(
    judge: Annotated[str | None, typer.Option("--judge", help="rules | llm | rm | gen-rm (rm:RUN_DIR, "
                                                               "gen-rm:RUN_DIR)")] = None,
    data: Annotated[str | None, typer.Option("--data", help="comma list of set names or files")] = None,
    data_dir: DataDirOpt = None,
    limit: Annotated[int | None, typer.Option("--limit", help="N random pairs per set (quick runs)")] = None,
    model: Annotated[str | None, typer.Option("--model", help="llm judge model: default, a folder or hub id")] = None,
    device: DeviceOpt = None,
    rm: Annotated[Path | None, typer.Option("--rm", help="reward-model run dir (for --judge rm / gen-rm)")] = None,
    profile: Annotated[Path | None, typer.Option("--profile", help="judge with this profile's rubric")] = None,
    max_new_tokens: Annotated[int | None, typer.Option("--max-new-tokens", help="llm judge answer length")] = None,
    ties: Annotated[bool | None, typer.Option("--ties/--no-ties", help="llm judge: offer a tie answer "
                                              "(default: the official A/B format)")] = None,
    n_boot: Annotated[int | None, typer.Option("--n-boot", help="bootstrap resamples")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="random seed (data split, training, bootstrap)")] = None,
    out: OutOpt = None,
    resume: ResumeOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Accuracy, Cohen's kappa, tie / unparseable / position-bias rates of a judge, with bootstrap 95 % CIs."""
    overrides = {
        "judge": judge, "data": split_csv(data), "data_dir": str(data_dir) if data_dir else None, "limit": limit,
        "model.model": model, "model.device": device, "rm": str(rm) if rm else None,
        "profile": str(profile) if profile else None, "max_new_tokens": max_new_tokens, "ties": ties,
        "n_boot": n_boot,
        "seed": seed, "out": str(out) if out else None, "resume": resume,
    }
    cfg = resolve_run_config(JudgeValidateConfig, "judge validate", config, overrides)
    refuse_unused(given_fields(config, overrides), MODE_OPTIONS[cfg.judge], f"by --judge {cfg.judge}")
    path, summary = run_validation(cfg)
    show_validation(summary, cfg.judge)
    console.print(f"run dir: [bold]{path}[/]")


def register(app: typer.Typer) -> None:
    app.add_typer(judge_app, name="judge")
