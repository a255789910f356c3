"""`serve`: personalized models behind an OpenAI-compatible API (hf engine, or vLLM as a child process)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from personalign.cli.common import ConfigOpt, DeviceOpt, DtypeOpt, ModelOpt, split_csv, takes_config
from personalign.config import resolve_config


@takes_config("personalign.serve.config:ServeConfig")
def serve(
    runs: Annotated[str | None, typer.Option("--runs", help="comma list of run dirs (DIR or DIR+prompt)")] = None,
    profile: Annotated[Path | None, typer.Option("--profile", help="profile for --methods")] = None,
    methods: Annotated[str | None, typer.Option("--methods", help="untrained methods, e.g. prompt,prompt-rag")] = None,
    engine: Annotated[str | None, typer.Option("--engine", help="hf | vllm")] = None,
    host: Annotated[str | None, typer.Option("--host", help="bind address (default 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option("--port", help="port (default 8000)")] = None,
    api_key: Annotated[str | None, typer.Option("--api-key", help="required bearer key", envvar="PERSONALIGN_API_KEY",
                                                show_envvar=True)] = None,
    adapter_root: Annotated[Path | None, typer.Option("--adapter-root", help="allow hot-loading from here")] = None,
    max_batch: Annotated[int | None, typer.Option("--max-batch", help="sequences per generate call")] = None,
    batch_window_ms: Annotated[float | None, typer.Option("--batch-window-ms", help="batching window")] = None,
    max_queue: Annotated[int | None, typer.Option("--max-queue", help="queued requests before 429")] = None,
    model: ModelOpt = None,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Serve base model, methods and trained runs over OpenAI's chat API (model = run name or profile-method)."""
    from personalign.serve.config import ServeConfig

    cfg = resolve_config(
        ServeConfig, config,
        {"runs": split_csv(runs), "profile": str(profile) if profile else None, "methods": split_csv(methods),
         "engine": engine, "host": host, "port": port, "api_key": api_key,
         "adapter_root": str(adapter_root) if adapter_root else None, "max_batch": max_batch,
         "batch_window_ms": batch_window_ms, "max_queue": max_queue,
         "model.model": model, "model.dtype": dtype, "model.device": device},
    )
    if cfg.engine == "vllm":
        from personalign.serve.vllm import serve_vllm

        serve_vllm(cfg)
    else:
        from personalign.serve.server import serve_forever

        serve_forever(cfg)


def register(app: typer.Typer) -> None:
    app.command()(serve)
