"""`generate`, `compare` and `demo`: run methods on prompts and show them side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import Field
from rich.table import Table

from personalign.cli.common import (
    ConfigOpt,
    DeviceOpt,
    DtypeOpt,
    ModelOpt,
    OutOpt,
    ResumeOpt,
    TempOpt,
    check_device,
    console,
    err_console,
    given_fields,
    refuse_unused,
    resolve_run_config,
    split_csv,
    takes_config,
)
from personalign.config import Config, ModelConfig, SamplingConfig, resolve_config
from personalign.errors import PersonalignError

SeedOpt = Annotated[int | None, typer.Option("--seed", help="sampling seed")]
TokensOpt = Annotated[int | None, typer.Option("--max-new-tokens", help="tokens to generate per sample")]


class GenerateConfig(Config):
    profile: str | None = Field(None, description="profile file (not needed with --run)")
    method: str = "prompt"
    prompt: str = Field(..., min_length=1)
    run: str | None = Field(None, description="a trained run dir; generates with its adapter")
    model: ModelConfig = Field(default_factory=ModelConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    method_config: dict[str, Any] = Field(default_factory=dict)


@takes_config("personalign.cli.generate:GenerateConfig")
def generate(
    prompt: Annotated[str | None, typer.Option("--prompt", help="the request to answer")] = None,
    profile: Annotated[Path | None, typer.Option("--profile", help="profile YAML/JSON")] = None,
    method: Annotated[str | None, typer.Option("--method", help="base | prompt | prompt-rag | ...")] = None,
    run: Annotated[Path | None, typer.Option("--run", help="trained run dir (personalize output)")] = None,
    model: ModelOpt = None,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    max_new_tokens: TokensOpt = None,
    temperature: TempOpt = None,
    seed: SeedOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Print one personalized completion for PROMPT."""
    from personalign.methods.spec import resolve_personalizer

    overrides = {
        "prompt": prompt, "profile": str(profile) if profile else None, "method": method,
        "run": str(run) if run else None, "model.model": model, "model.dtype": dtype, "model.device": device,
        "sampling.max_new_tokens": max_new_tokens, "sampling.temperature": temperature, "sampling.seed": seed}
    cfg = resolve_config(GenerateConfig, config, overrides)
    check_device(cfg.model.device)
    if cfg.run:  # the run dir names its method, model and method config
        refuse_unused(given_fields(config, overrides), {"method": "--method", "model.model": "--model",
                                                        "method_config": "method_config"}, "with --run")
    if not cfg.run and not Path(cfg.method.removesuffix("+prompt")).is_dir():
        from personalign.methods.base import method_class

        validate_names([cfg.method])
        if method_class(cfg.method).trainable:
            raise PersonalignError(
                f"--method {cfg.method} is trained, and generate does not train: run `personalign personalize "
                f"--profile P --method {cfg.method}` once, then `personalign generate --run RUN_DIR --prompt ...`")
    personalizer = resolve_personalizer(cfg.run or cfg.method, profile=cfg.profile, model=cfg.model,
                                        method_config=cfg.method_config)
    output = personalizer.generate([cfg.prompt], cfg.sampling)[0][0]
    typer.echo(output)  # the raw text, never re-wrapped: it may be piped into a file or another program


@takes_config("personalign.evaluation.compare:CompareConfig")
def compare(
    profile: Annotated[Path | None, typer.Option("--profile", help="profile YAML/JSON")] = None,
    methods: Annotated[str | None, typer.Option("--methods", help="comma list, e.g. base,prompt,prompt-rag")] = None,
    runs: Annotated[str | None, typer.Option("--runs", help="comma list of trained run dirs")] = None,
    n_prompts: Annotated[int | None, typer.Option("--n-prompts", help="first K eval prompts")] = None,
    out: OutOpt = None,
    resume: ResumeOpt = None,
    quick: Annotated[bool | None, typer.Option("--quick/--full", help="quick method settings")] = None,
    model: ModelOpt = None,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    max_new_tokens: TokensOpt = None,
    temperature: TempOpt = None,
    seed: SeedOpt = None,
    wandb: Annotated[str | None, typer.Option("--wandb", help="also track to this wandb project")] = None,
    config: ConfigOpt = None,
) -> None:
    """Generate for the profile's eval prompts with each method; print a side-by-side table."""
    from personalign.evaluation.compare import CompareConfig

    if profile is None and not resume and not _config_sets(config, "profile"):  # a resumed run has its own
        raise PersonalignError("compare needs --profile PATH (the person to compare methods for; "
                               "configs/profiles/example.yaml is an example)")
    cfg = resolve_run_config(
        CompareConfig, "compare", config,
        {"profile": str(profile) if profile else None, "methods": split_csv(methods), "runs": split_csv(runs),
         "n_prompts": n_prompts, "out": str(out) if out else None, "resume": resume,
         "quick": quick, "model.model": model, "model.dtype": dtype, "model.device": device,
         "sampling.max_new_tokens": max_new_tokens, "sampling.temperature": temperature,
         "sampling.seed": seed, "wandb": wandb},
    )
    _run_and_print(cfg, "compare")


def validate_names(methods: list[str]) -> None:
    """Every method name must exist before anything is created (a typo fails before `base` runs)."""
    from personalign.config import suggest
    from personalign.methods.base import available_methods

    valid = available_methods()
    for name in methods:
        if name not in valid:
            raise PersonalignError(f"--methods: unknown method {name!r}{suggest(name, valid)}; choose from "
                                   f"{', '.join(valid)}")


def _config_sets(config: Path | None, key: str) -> bool:
    from personalign.io import read_yaml

    data = read_yaml(config) if config else None
    return isinstance(data, dict) and data.get(key) is not None


def _say(line: str) -> None:
    err_console.print(line, highlight=False, markup=False)


def _run_and_print(cfg: Any, command: str) -> Path:
    from personalign.evaluation.compare import run_comparison

    validate_names(cfg.methods)
    run, summary = run_comparison(cfg, command=command, echo=_say)
    show_side_by_side(run.outputs, limit=3)
    show_summary(summary)
    console.print(f"run dir: [bold]{run.path}[/]")
    return run.path


def show_side_by_side(rows: list[dict[str, Any]], limit: int = 3, width: int = 400) -> None:
    prompts = list(dict.fromkeys(r["prompt"] for r in rows))[:limit]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    table = Table(title="side by side (first sample)", show_lines=True)
    table.add_column("prompt", max_width=28)
    for m in methods:
        table.add_column(m)
    for p in prompts:
        cells = []
        for m in methods:
            text = next((r["output"] for r in rows if r["prompt"] == p and r["method"] == m and r["sample"] == 0), "")
            cells.append(text if len(text) <= width else text[:width] + " …")
        table.add_row(p, *cells)
    console.print(table)


def show_summary(summary: dict[str, dict[str, Any]]) -> None:
    checks = sorted({k for s in summary.values() for k in s if k.startswith("pass_")})
    table = Table(title="methods × constraint compliance")
    for column in ["method", "compliance", *[c.removeprefix("pass_") for c in checks], "mean words", "seconds"]:
        table.add_column(column, justify="left" if column == "method" else "right")
    for method, stats in summary.items():
        table.add_row(
            method, f"{stats['compliance']:.0%}", *[f"{stats[c]:.0%}" for c in checks],
            f"{stats['mean_words']:.0f}", f"{stats.get('seconds', 0):.0f}",
        )
    console.print(table)


def demo(
    quick: Annotated[bool, typer.Option("--quick/--full", help="4 prompts × 96 tokens instead of 8 × 160")] = False,
    out: OutOpt = None,
    resume: ResumeOpt = None,
    methods: Annotated[str | None, typer.Option(
        "--methods", help="comma list of methods", show_default=", ".join(DEMO_METHODS) + " (those installed)")] = None,
    config: ConfigOpt = None,
) -> None:
    """Compare every available method on the example profile, end with a summary table and a report."""
    from personalign.evaluation.compare import CompareConfig
    from personalign.methods.base import available_methods

    defaults = CompareConfig(
        methods=[m for m in available_methods() if m in DEMO_METHODS], name="demo", quick=True,
        n_prompts=4 if quick else 8,
        sampling=SamplingConfig(max_new_tokens=96 if quick else 160, temperature=0.7, repetition_penalty=1.15, seed=0),
    ).to_dict()
    cfg = resolve_run_config(
        CompareConfig, "demo", config,
        {"methods": split_csv(methods), "out": str(out) if out else None, "resume": resume}, defaults=defaults,
    )
    console.print(f"personalign demo: methods {', '.join(cfg.methods)} on {Path(cfg.profile).name}")
    run_path = _run_and_print(cfg, "demo")
    finish_demo(run_path)


# Methods the demo runs when present (rlaif is left to its own command: it needs a trained reward). The +prompt
# variants show a trained adapter with the profile's prompt: on a 135M model prompting carries most of the style.
DEMO_METHODS = ("base", "prompt", "prompt-rag", "sft", "sft+prompt", "ditto", "ditto+prompt")


def finish_demo(run_path: Path) -> None:
    """Write the HTML report of the demo run and print its path."""
    from personalign.evaluation.report import write_report

    report = write_report([run_path], run_path / "report.html")
    console.print(f"report: [bold]{report}[/]")


def register(app: typer.Typer) -> None:
    app.command()(generate)
    app.command()(compare)
    app.command()(demo)
