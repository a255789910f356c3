"""`feedback export`: write the studio's choices and edits as JSONL pairs or demonstrations for other tools."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from pydantic import Field

from personalign.cli.common import PersonalignTyper, err_console, takes_config
from personalign.config import Config, resolve_config
from personalign.errors import PersonalignError

feedback_app = PersonalignTyper(name="feedback", help="The studio's feedback database.", no_args_is_help=True)


class ExportConfig(Config):
    db: str = Field(..., description="feedback database the studio wrote")
    format: str = Field("pairs", description="pairs (prompt, chosen, rejected) | demonstrations (prompt, output)")
    out: str | None = Field(None, description="JSONL file to write (default: standard output)")
    profile: str | None = Field(None, description="also hold out answers on this profile's eval prompts")
    include_eval_prompts: bool = Field(False, description="use answers on eval prompts too (they stop measuring)")


@feedback_app.command("export")
@takes_config("personalign.cli.feedback:ExportConfig")
def export_cmd(
    db: Annotated[Path | None, typer.Option("--db", help="feedback database (feedback.sqlite)")] = None,
    format: Annotated[str | None, typer.Option("--format", help="pairs | demonstrations")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="JSONL file (default: stdout)")] = None,
    profile: Annotated[Path | None, typer.Option("--profile", help="hold out its eval prompts too")] = None,
    include_eval_prompts: Annotated[
        bool | None, typer.Option("--include-eval-prompts", help="train on eval-prompt answers too")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="YAML file with the same fields")] = None,
) -> None:
    """Export preference pairs or edited demonstrations as JSONL (answers on eval prompts are held out)."""
    from personalign.feedback.db import FeedbackDB
    from personalign.feedback.export import FORMATS, export
    from personalign.io import atomic_write_jsonl
    from personalign.profiles import load_profile

    cfg = resolve_config(ExportConfig, config, {
        "db": str(db) if db else None, "format": format, "out": str(out) if out else None,
        "profile": str(profile) if profile else None, "include_eval_prompts": include_eval_prompts})
    if cfg.format not in FORMATS:
        raise PersonalignError(f"--format {cfg.format!r}: choose one of {', '.join(FORMATS)}")
    if cfg.out and Path(cfg.out).is_dir():
        raise PersonalignError(f"--out {cfg.out}: is a folder; pass the JSONL file to write")
    if not Path(cfg.db).is_file():
        raise PersonalignError(f"--db {cfg.db}: file not found; pass the feedback.sqlite the studio wrote")
    result = export(FeedbackDB(cfg.db), cfg.format, load_profile(cfg.profile) if cfg.profile else None,
                    cfg.include_eval_prompts)
    if cfg.out:
        atomic_write_jsonl(cfg.out, result.rows)
    else:
        for row in result.rows:
            typer.echo(json.dumps(row, ensure_ascii=False))
    err_console.print(f"{result.summary(cfg.format)}" + (f" → {cfg.out}" if cfg.out else ""), highlight=False)


def register(app: typer.Typer) -> None:
    app.add_typer(feedback_app, name="feedback")
