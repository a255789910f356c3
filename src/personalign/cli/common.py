"""Shared CLI plumbing: the app class that turns PersonalignError into one red line, and the console."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.console import Console
from typer.core import TyperGroup

from personalign.errors import PersonalignError

# Options shared by several commands (each maps to a config field of the command it is used in).
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="YAML file with the same fields as the flags")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="auto | cpu | cuda")]
OutOpt = Annotated[Path | None, typer.Option("--out", help="parent folder of run dirs")]
RunDirOpt = Annotated[Path | None, typer.Option("--run-dir", help="write into (or resume) this run dir")]
DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", help="folder holding the shared data sets")]
ModelOpt = Annotated[str | None, typer.Option("--model", help="'default', a HF model id or a local folder")]
DtypeOpt = Annotated[str | None, typer.Option("--dtype", help="auto | fp32 | bf16")]
TempOpt = Annotated[float | None, typer.Option("--temperature", help="0 = greedy")]

# Tables need room: when output is not a terminal (pipes, CI logs) rich would fall back to 80 columns.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)


class _UserErrorGroup(TyperGroup):
    """Click group whose invoke reports user errors as `error: ...` (exit 2) instead of a traceback.

    Done at the click level (not around `app()`) so typer's test runner sees the same behaviour.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PersonalignError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True, markup=True)
            raise typer.Exit(2) from None


class PersonalignTyper(typer.Typer):
    def __init__(self, **kwargs: Any):
        kwargs.setdefault("cls", _UserErrorGroup)
        super().__init__(**kwargs)


def split_csv(value: str | None) -> list[str] | None:
    """'a,b, c' → ['a', 'b', 'c']; None stays None (flag not given)."""
    if value is None:
        return None
    return [part.strip() for part in value.split(",") if part.strip()]
