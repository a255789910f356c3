"""Shared CLI plumbing: the app and command classes that hold every command to one contract (user errors as
one line and exit 2, Ctrl-C as exit 130, help with every default), the resume contract, and the consoles."""

from __future__ import annotations

import errno
import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.markup import escape
from typer import _click as click  # typer vendors click: its exceptions and contexts are these, not `click`'s
from typer.core import TyperCommand, TyperGroup, TyperOption

from personalign.config import flag_name, resolve_config
from personalign.errors import PersonalignError
from personalign.runs import flatten

C = TypeVar("C", bound=BaseModel)
F = TypeVar("F", bound=Callable[..., Any])

# Options shared by several commands (each maps to a config field of the command it is used in).
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="YAML file with the same fields as the flags")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="auto | cpu | cuda")]
OutOpt = Annotated[Path | None, typer.Option(
    "--out", help="the run dir to write: new or empty (default: runs/<command>-<UTC time>)")]
ResumeOpt = Annotated[bool | None, typer.Option(
    "--resume", help="continue the run in --out (default: the newest run of this command) with its settings")]
DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", help="folder holding the shared data sets")]
ModelOpt = Annotated[str | None, typer.Option("--model", help="'default', a HF model id or a local folder")]
DtypeOpt = Annotated[str | None, typer.Option("--dtype", help="auto | fp32 | bf16")]
TempOpt = Annotated[float | None, typer.Option("--temperature", help="0 = greedy")]

# Tables need room: when output is not a terminal (pipes, CI logs) rich would fall back to 80 columns.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, soft_wrap=True)  # notes and errors stay one line each, whatever the width


def user_error_message(exc: BaseException) -> str | None:
    """The one-line message for an error the user can fix, by kind; None for a bug (keeps its traceback).

    The CLI boundary catches by kind, not call by call, so every command (and every new one) behaves alike.
    """
    if isinstance(exc, PersonalignError):
        return str(exc)
    if isinstance(exc, ValidationError):
        from personalign.config import format_validation_error

        return format_validation_error(exc, "settings")
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError, FileExistsError)):
        # os.replace names the temp file first; the user knows the target
        target = getattr(exc, "filename2", None) or exc.filename
        where = f"{target}: " if target else ""
        return f"{where}{exc.strerror or exc}; check the path"
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return f"disk full while writing {exc.filename or 'a file'}; free space or choose another --out"
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return "out of memory; lower the batch size (model.batch_size) or --max-new-tokens, or use a smaller --model"
    module = type(exc).__module__ or ""
    if module.startswith("wandb"):
        return f"wandb: {str(exc).splitlines()[0]} (run `wandb login`, or set WANDB_MODE=offline)"
    text = str(exc)
    if isinstance(exc, RuntimeError | AssertionError) and any(
            s in text for s in ("device type at start of device string", "Torch not compiled with CUDA",
                                "no NVIDIA driver", "CUDA driver")):
        return f"device: {text.splitlines()[0]}; use --device auto, cpu or cuda"
    return None


def _interrupted_message(ctx: click.Context) -> str:
    from personalign.runs import active_run

    active = active_run()
    if active is None:
        return "interrupted; nothing was saved"
    command, path = active
    saved = [p.name for p in sorted(path.iterdir()) if not p.name.startswith(".")] if path.is_dir() else []
    checkpoints = sorted(path.rglob("checkpoints/step-*"))
    what = ", ".join(saved) or "nothing yet"
    if checkpoints:
        what += f"; last checkpoint {checkpoints[-1].name}"
    return f"interrupted: saved {what} in {path}; resume with: personalign {command} --out {path} --resume"


class _UserErrorGroup(TyperGroup):
    """Click group whose invoke reports user errors as `error: ...` (exit 2) instead of a traceback, and
    Ctrl-C as one line saying what was saved and how to resume (exit 130).

    Done at the click level (not around `app()`) so typer's test runner sees the same behaviour. Run dirs
    that a failed command created and left without results are removed: nothing is left behind.
    """

    def invoke(self, ctx: click.Context) -> Any:
        from personalign.runs import discard_unfinished_new_runs, reset_run_tracking

        if ctx.parent is None:
            from personalign.settings import quiet_third_party

            reset_run_tracking()
            quiet_third_party()
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, click.exceptions.ClickException):
            raise
        except KeyboardInterrupt:
            if ctx.parent is not None:
                raise
            err_console.print(_interrupted_message(ctx), highlight=False, soft_wrap=True, markup=False)
            raise typer.Exit(130) from None
        except Exception as exc:
            message = user_error_message(exc)
            if message is None or ctx.parent is not None:
                raise
            discard_unfinished_new_runs()
            err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None


CONFIG_ATTR = "__personalign_config__"


def takes_config(target: str, **fields: str) -> Callable[[F], F]:
    """Declare which config a command resolves ('module:Class', imported only for --help) and, for a parameter
    not named like its field's last part, which dotted field it sets: help then shows that field's default."""

    def mark(func: F) -> F:
        setattr(func, CONFIG_ATTR, (target, fields))
        return func

    return mark


def _field_for(cls: type[BaseModel], name: str, explicit: dict[str, str]) -> str | None:
    from personalign.config import _submodel, field_paths

    if name in explicit:
        return explicit[name]
    name = name.rstrip("_")
    if name in cls.model_fields:
        sub = _submodel(cls.model_fields[name].annotation)
        # `--model` sets model.model (the ModelConfig's own field of that name), not the whole section
        return f"{name}.{name}" if sub is not None and name in sub.model_fields else name
    matches = [p for p in field_paths(cls) if p.rsplit(".", 1)[-1] == name]
    return matches[0] if len(matches) == 1 else None


def _default_text(value: Any, param: Any) -> str:
    if param.is_flag:
        on, off = param.opts[0], (param.secondary_opts or ["off"])[0]
        return (on if value else off).lstrip("-")
    if value is None:
        return "none"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value) or "none"
    if isinstance(value, dict):
        return "none" if not value else ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


class PersonalignCommand(TyperCommand):
    """A command whose --help shows every option's real default, read from the config the flag sets (flags
    default to None so that a --config file can set them too; click alone would show nothing)."""

    def fill_defaults(self) -> None:
        if getattr(self, "_defaults_filled", False):
            return
        self._defaults_filled = True
        callback = getattr(self.callback, "__wrapped__", self.callback)
        target, explicit = getattr(callback, CONFIG_ATTR, (None, {}))
        cls = None
        if target:
            module, _, name = target.partition(":")
            cls = getattr(importlib.import_module(module), name)
        from personalign.config import MISSING, field_default

        for param in self.params:
            if not isinstance(param, TyperOption) or isinstance(param.show_default, str) or param.default is not None:
                continue
            dotted = _field_for(cls, param.name or "", explicit) if cls is not None else None
            value = field_default(cls, dotted) if dotted else None
            if value is MISSING:
                param.show_default = False
                param.help = f"{param.help or ''} [required]".strip()
            else:
                param.show_default = _default_text(value, param)

    def format_help(self, ctx: Any, formatter: Any) -> None:
        self.fill_defaults()
        return super().format_help(ctx, formatter)


def _version(value: bool) -> None:
    if value:
        from personalign import __version__

        typer.echo(f"personalign {__version__}")
        raise typer.Exit()


class PersonalignTyper(typer.Typer):
    """typer.Typer with the project's contract: user errors as one line (exit 2), Ctrl-C as exit 130, `-h`,
    and help that shows every default. Every command module uses it (the contract test checks)."""

    def __init__(self, **kwargs: Any):
        kwargs.setdefault("cls", _UserErrorGroup)
        kwargs.setdefault("context_settings", {"help_option_names": ["-h", "--help"]})
        super().__init__(**kwargs)

    def command(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("cls", PersonalignCommand)
        return super().command(*args, **kwargs)

    def add_version_option(self) -> None:
        """`personalign --version` on the root app."""

        @self.callback()
        def root(
            version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                  help="print the version and exit")] = False,
        ) -> None:
            pass


def split_csv(value: str | None) -> list[str] | None:
    """'a,b, c' → ['a', 'b', 'c']; None stays None (flag not given)."""
    if value is None:
        return None
    return [part.strip() for part in value.split(",") if part.strip()]


def check_device(device: str | None) -> None:
    """An unknown device, or `--device cuda` on a machine without a visible GPU: one line now, not a torch error
    later."""
    from personalign.config import DEVICE_PATTERN

    if device and not DEVICE_PATTERN.fullmatch(device):
        raise PersonalignError(f"--device {device}: unknown device; use auto, cpu, cuda, cuda:N or mps")
    if device and device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise PersonalignError(f"--device {device}: no CUDA GPU is visible here; use --device cpu (or auto)")


def resolve_run_config(
    cls: type[C], command: str, config_file: Path | None, overrides: dict[str, Any],
    flags: dict[str, str] | None = None, defaults: dict[str, Any] | None = None,
) -> C:
    """Resolve a run command's config under the one resume contract every command shares.

    `--out DIR` is the run dir itself (default runs/<command>-<time>). Without `--resume`, DIR must be new or
    empty. With `--resume` (DIR defaults to the newest run of this command), settings not given now come from
    the saved run, and settings given now must equal it except where/how-long fields (`runs.PLACEMENT_FIELDS`):
    otherwise one line names the flags that differ. Everything is checked before anything is created.
    """
    from personalign.io import read_yaml
    from personalign.runs import check_run_target, latest_run, settings_diff

    # Where and whether to resume are read first: a resumed run's required settings come from its saved config.
    raw = read_yaml(config_file) if config_file else None
    raw = raw if isinstance(raw, dict) else {}
    resume = overrides.get("resume")
    resume = bool(raw.get("resume", (defaults or {}).get("resume", False))) if resume is None else resume
    out = overrides.get("out") or raw.get("out") or (defaults or {}).get("out")
    if resume:
        if not out:
            found = latest_run(command)
            if found is None:
                raise PersonalignError(f"--resume: no earlier `{command}` run found; pass --out RUN_DIR")
            out = str(found)
            overrides = {**overrides, "out": out}
            err_console.print(f"resuming {out}", highlight=False)
        check_run_target(Path(out), command, True)
        saved_file = Path(out) / "config.yaml"
        saved = read_yaml(saved_file) if saved_file.is_file() else {}
        cfg = resolve_config(cls, config_file, overrides, defaults=saved, flags=flags)
        differ = settings_diff(saved, cfg.model_dump(mode="json"))
        if not saved_file.is_file():
            differ = []  # nothing saved to compare with (interrupted before its config was written)
        if differ:
            named = ", ".join(f"{flag_name(d, flags)} ({_short(flatten(saved).get(d))} → "
                              f"{_short(flatten(cfg.model_dump(mode='json')).get(d))})" for d in differ)
            raise PersonalignError(f"--resume {out}: settings differ from the run it resumes: {named}; drop them "
                                   "to resume with its settings, or choose a new --out")
    else:
        cfg = resolve_config(cls, config_file, overrides, defaults=defaults, flags=flags)
        if cfg_out := getattr(cfg, "out", None):
            check_run_target(Path(cfg_out), command, False)
    model = getattr(cfg, "model", None)
    check_device(getattr(model, "device", None))
    project = getattr(cfg, "wandb", None)
    if project:
        from personalign.settings import wandb_problem

        problem = wandb_problem()
        if problem:
            raise PersonalignError(f"--wandb {project}: {problem}")
    return cfg


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def given_fields(config_file: Path | None, overrides: dict[str, Any]) -> set[str]:
    """Dotted fields the user set (a flag, or a key in --config): what a mode that ignores them must refuse."""
    from personalign.io import read_yaml

    given = {key for key, value in overrides.items() if value is not None}
    loaded = read_yaml(config_file) if config_file else None
    if isinstance(loaded, dict):
        given |= set(flatten(loaded))
    return given


def refuse_unused(given: set[str], unused: dict[str, str], why: str) -> None:
    """One line naming the first option (dotted field → flag) that the chosen mode would silently ignore."""
    for dotted, flag in unused.items():
        if dotted in given or any(g.startswith(f"{dotted}.") for g in given):
            raise PersonalignError(f"{flag}: not used {why}; drop it (or pick the mode it is for)")
