"""Start a personalign command as N data-parallel processes through accelerate's launcher, and wait for them.

`personalize --engine accelerate --num-processes N` calls `relaunch`: the same command runs again in N processes
(torchrun-style workers, as `accelerate launch --multi_gpu` starts them; on CPU the engine's Accelerator picks the
gloo backend), each with the resolved config, so every flag reaches every process unchanged. The launcher runs
in this process (accelerate's Python API, not a shell), so a failed process becomes one exit code here instead
of torchrun's multi-screen error report: the failing process already printed its own one-line error.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from personalign.errors import PersonalignError
from personalign.settings import LAUNCHED_ENV

# The cluster form of the same run, shown in the README: accelerate launch [ARGS] -m personalign.cli.main ...
ENTRY_MODULE = "personalign.cli.main"


def load_accelerate_config(path: str | Path) -> Any:
    """accelerate's own parsed config (its `ClusterConfig`), or a one-line error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise PersonalignError(f"--accelerate-config {path}: file not found; pass an accelerate config YAML "
                               "(see configs/accelerate/)")
    from accelerate.commands.config.config_args import load_config_from_file

    try:
        return load_config_from_file(str(path))
    except (TypeError, ValueError, KeyError) as exc:  # unknown keys / bad values, as accelerate itself reports them
        raise PersonalignError(f"--accelerate-config {path}: not a valid accelerate config ({exc}); "
                               "start from one in configs/accelerate/") from None


# accelerate distributed types the engine trains under: DDP (every process holds the whole model) and FSDP2
# (parameters, gradients and optimizer state sharded; tested on CPU processes over gloo). DeepSpeed would need its
# engine to own the optimizer step and the saving (`accelerator.prepare` returns a DeepSpeedEngine): not done, and
# not testable here (deepspeed 0.19.8 installs beside torch 2.13 CPU, but a 2-process gloo step never finished).
SUPPORTED_TYPES = ("NO", "MULTI_GPU", "MULTI_CPU", "FSDP")


def check_distributed_type(distributed_type: Any, where: str) -> None:
    """One line when accelerate would run the engine in a way it does not train under (DeepSpeed, ...)."""
    name = getattr(distributed_type, "value", str(distributed_type))
    if name == "DEEPSPEED":
        raise PersonalignError(f"{where}: DeepSpeed is not supported by the accelerate engine; for sharded optimizer "
                               "state and gradients use configs/accelerate/fsdp.yaml (FSDP2), else "
                               "configs/accelerate/ddp.yaml")
    if name not in SUPPORTED_TYPES:
        raise PersonalignError(f"{where}: distributed_type {name} is not supported by the accelerate engine; use "
                               "configs/accelerate/ddp.yaml (DDP) or configs/accelerate/fsdp.yaml (FSDP2)")


def check_fsdp_version(version: Any, where: str) -> None:
    """FSDP1 flattens each wrapped module's parameters into one tensor that must be all trainable or all frozen,
    which LoRA's mix breaks without extra wrapping policies; only FSDP2 (per-parameter shards) is supported."""
    if int(version) != 2:
        raise PersonalignError(f"{where}: fsdp_version {version} is not supported by the accelerate engine; set "
                               "fsdp_config.fsdp_version: 2 (FSDP2, as configs/accelerate/fsdp.yaml does)")


def check_accelerate_config(path: str | Path) -> Any:
    """The parsed config of `--accelerate-config`, refused in one line if the engine cannot train under it."""
    config = load_accelerate_config(path)
    where = f"--accelerate-config {path}"
    check_distributed_type(config.distributed_type, where)
    if getattr(config.distributed_type, "value", "") == "FSDP":
        check_fsdp_version((config.fsdp_config or {}).get("fsdp_version", 1), where)
    return config


def free_port() -> int:
    """A free loopback TCP port for the processes' rendezvous (a fixed 29500 collides with any other run)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch_args(command: Sequence[str], num_processes: int | None, config_file: str | None,
                port: int | None = None) -> list[str]:
    """`accelerate launch` arguments that run `python -m personalign.cli.main COMMAND...` in the processes."""
    args = ["--num_machines", "1", "--main_process_port", str(port or free_port()), "--dynamo_backend", "no"]
    if config_file:
        args += ["--config_file", str(config_file)]
    else:
        args += ["--mixed_precision", "no"]  # the model's own dtype decides; accelerate's autocast stays off
    if num_processes is not None:
        args += ["--num_processes", str(num_processes)]
    if not config_file and (num_processes or 1) > 1:
        # Several workers on one machine: torchrun's launcher (accelerate's --cpu would need mpirun for this).
        args.append("--multi_gpu")
    return [*args, "-m", ENTRY_MODULE, *command]


def relaunch(command: Sequence[str], num_processes: int | None, config_file: str | None) -> int:
    """Run `command` (personalign arguments) under accelerate's launcher; the exit code of the run.

    0 when every process finished; else the main process's code (it printed the error), or the first
    failing process's; 130 on Ctrl-C (each process saved what it could and rank 0 said how to resume).
    """
    from accelerate.commands.launch import launch_command, launch_command_parser

    args = launch_command_parser().parse_args(launch_args(command, num_processes, config_file))
    quiet = [logging.getLogger(name) for name in ("torch.distributed.elastic", "torch.distributed.run",
                                                  "accelerate.commands.launch")]
    levels = [logger.level for logger in quiet]
    previous = os.environ.get(LAUNCHED_ENV)
    os.environ[LAUNCHED_ENV] = "1"  # the launched processes must run the command, not relaunch it
    try:
        for logger in quiet:
            logger.setLevel(logging.CRITICAL)
        launch_command(args)
    except KeyboardInterrupt:
        return 130
    except ValueError as exc:  # accelerate's own check of the launch settings (e.g. its config file's)
        raise PersonalignError(f"accelerate launch: {exc}") from None
    except Exception as exc:  # every other launcher failure becomes the run's exit code
        return _exit_code(exc)
    finally:
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)
        if previous is None:
            os.environ.pop(LAUNCHED_ENV, None)
        else:
            os.environ[LAUNCHED_ENV] = previous
    return 0


def _exit_code(exc: BaseException) -> int:
    failures = getattr(exc, "failures", None)  # torch.distributed.elastic's ChildFailedError: rank → failure
    if isinstance(failures, dict) and failures:
        rank = 0 if 0 in failures else min(failures)
        code = int(getattr(failures[rank], "exitcode", 1) or 1)
        if code < 0:  # killed by a signal (SIGINT -2 when Ctrl-C reached the workers first)
            return 130 if code == -2 else 1
        if rank != 0:
            print(f"error: process {rank} of the run failed (exit code {code}); its output is above",
                  file=sys.stderr)
        return code
    code = getattr(exc, "returncode", None)  # the one-process launcher's CalledProcessError
    if isinstance(code, int):
        return code or 1
    if type(exc).__name__ == "SignalException":  # torchrun got SIGINT/SIGTERM and stopped the workers
        return 130
    raise exc
