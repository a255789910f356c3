"""`export`: a trained run as a merged Hugging Face folder, a PEFT adapter, or an Ollama model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from personalign.cli.common import ConfigOpt, DeviceOpt, console
from personalign.config import resolve_config


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
    console.print(f"exported: [bold]{export_run(cfg)}[/]")


def register(app: typer.Typer) -> None:
    app.command()(export)
