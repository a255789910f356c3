"""Shared CLI plumbing: the app class that turns PersonalignError into one red line, and the console."""

from __future__ import annotations

import sys
from typing import Any

import typer
from rich.console import Console

from personalign.errors import PersonalignError

console = Console(stderr=False)
err_console = Console(stderr=True)


class PersonalignTyper(typer.Typer):
    """A Typer app that reports user errors as `error: ...` (exit 2) instead of a traceback."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except PersonalignError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            sys.exit(2)


def split_csv(value: str | None) -> list[str] | None:
    """'a,b, c' → ['a', 'b', 'c']; None stays None (flag not given)."""
    if value is None:
        return None
    return [part.strip() for part in value.split(",") if part.strip()]
