"""`studio`: the local feedback web app (blind compare, edit, profile, progress) over a feedback database."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from personalign.cli.common import ConfigOpt, DeviceOpt, DtypeOpt, ModelOpt, TempOpt, console, split_csv, takes_config
from personalign.config import resolve_config
from personalign.errors import PersonalignError
from personalign.studio.config import LOOPBACK, StudioConfig


def prepare(cfg: StudioConfig) -> object:
    """Everything that can fail on bad input, checked before any model loads; then the app."""
    from personalign.feedback.db import FeedbackDB
    from personalign.profiles import load_profile
    from personalign.studio.app import Studio, create_app
    from personalign.studio.sources import build_sources, parse_sources

    if cfg.host not in LOOPBACK and not cfg.token:
        raise PersonalignError(f"--host {cfg.host} is reachable from other machines; pass --token SECRET so only "
                               "people with the token can answer (or bind 127.0.0.1)")
    profile = load_profile(cfg.profile)
    db = FeedbackDB(cfg.db)
    parse_sources(cfg.methods, cfg.runs)
    if cfg.prompts and not Path(cfg.prompts).is_file():
        raise PersonalignError(f"--prompts {cfg.prompts}: file not found; pass a text file with one prompt per line")
    sources = build_sources(profile, cfg.methods, cfg.runs, cfg.model)
    return create_app(Studio(cfg, sources, db))


@takes_config("personalign.studio.config:StudioConfig")
def studio(
    profile: Annotated[Path | None, typer.Option("--profile", help="profile YAML/JSON (editable there)")] = None,
    runs: Annotated[str | None, typer.Option("--runs", help="trained run dirs to compare, comma-separated")] = None,
    methods: Annotated[str | None, typer.Option("--methods", help="untrained methods, e.g. base,prompt")] = None,
    prompts: Annotated[Path | None, typer.Option("--prompts", help="text file, one prompt per line")] = None,
    db: Annotated[Path | None, typer.Option("--db", help="feedback database (created if absent)")] = None,
    host: Annotated[str | None, typer.Option("--host", help="bind address (default 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option("--port", help="port (default 8001)")] = None,
    token: Annotated[str | None, typer.Option("--token", help="access token (required off loopback)")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="seed of pair, order and sampling draws")] = None,
    model: ModelOpt = None,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    temperature: TempOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Compare candidates blind, edit them and the profile in the browser; answers go to a feedback database."""
    cfg = resolve_config(
        StudioConfig, config,
        {"profile": str(profile) if profile else None, "runs": split_csv(runs), "methods": split_csv(methods),
         "prompts": str(prompts) if prompts else None, "db": str(db) if db else None, "host": host, "port": port,
         "token": token, "seed": seed, "model.model": model, "model.dtype": dtype, "model.device": device,
         "sampling.temperature": temperature},
    )
    app = prepare(cfg)
    import uvicorn

    url = f"http://{cfg.host}:{cfg.port}/" + (f"?token={cfg.token}" if cfg.token else "")
    console.print(f"[bold]studio[/]: {url}  (feedback in {cfg.db}; Ctrl-C stops)")
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning")  # type: ignore[arg-type]


def register(app: typer.Typer) -> None:
    app.command()(studio)
