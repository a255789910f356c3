"""`export`: a trained run as a merged Hugging Face folder, a PEFT adapter, or an Ollama model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from personalign.cli.common import ConfigOpt, DeviceOpt, check_device, console, takes_config
from personalign.config import resolve_config
from personalign.errors import PersonalignError


@takes_config("personalign.export:ExportConfig")
def export(
    run: Annotated[str | None, typer.Option("--run", help="trained run dir (DIR or DIR+prompt)")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="folder to write")] = None,
    format: Annotated[str | None, typer.Option("--format", help="merged | adapter | ollama")] = None,
    device: DeviceOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Write a run as a folder transformers, vLLM or Ollama load."""
    from personalign.export import ExportConfig, export_run

    cfg = resolve_config(ExportConfig, config, {"run": run, "out": str(out) if out else None, "format": format,
                                                "device": device})
    check_device(cfg.device)
    check_export_target(Path(cfg.out))
    console.print(f"exported: [bold]{export_run(cfg)}[/]")


def check_export_target(out: Path) -> None:
    """The export replaces `out` whole: only a new or empty folder, or an earlier export, may be replaced."""
    from personalign.export import EXPORT_FILE

    if out.exists() and not out.is_dir():
        raise PersonalignError(f"--out {out}: is a file; pass a folder to write the export into")
    if out.is_dir() and any(out.iterdir()) and not (out / EXPORT_FILE).is_file():
        raise PersonalignError(f"--out {out}: is a folder of other files and not empty; the export replaces the "
                               "whole folder: choose a new or empty one")


def register(app: typer.Typer) -> None:
    app.command()(export)
