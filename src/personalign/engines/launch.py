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


# accelerate distributed types the engine trains under: DDP (every process holds the whole model), FSDP2
# (parameters, gradients and optimizer state sharded) and DeepSpeed ZeRO 1-2 (gradients and optimizer state
# partitioned), each tested on CPU processes over gloo.
SUPPORTED_TYPES = ("NO", "MULTI_GPU", "MULTI_CPU", "FSDP", "DEEPSPEED")
DEEPSPEED_STAGES = (1, 2)


def check_distributed_type(distributed_type: Any, where: str) -> None:
    """One line when accelerate would run the engine in a way it does not train under (XLA, Megatron, ...)."""
    name = getattr(distributed_type, "value", str(distributed_type))
    if name not in SUPPORTED_TYPES:
        raise PersonalignError(f"{where}: distributed_type {name} is not supported by the accelerate engine; use "
                               "configs/accelerate/ddp.yaml (DDP), fsdp.yaml (FSDP2) or deepspeed-zero2.yaml")


def check_deepspeed(settings: dict[str, Any], where: str) -> None:
    """DeepSpeed settings (an accelerate config's `deepspeed_config`) the engine trains under, in one line if not."""
    stage = int(settings.get("zero_stage", 2))
    if stage not in DEEPSPEED_STAGES:
        # Stage 3 partitions the weights too: sampling, snapshots (π_ref) and checkpoints would each need the
        # weights gathered, a path not written here; stage 0 is plain data parallelism (ddp.yaml does that).
        raise PersonalignError(f"{where}: DeepSpeed zero_stage {stage} is not supported by the accelerate engine; "
                               "use zero_stage 1 or 2 (configs/accelerate/deepspeed-zero2.yaml), or fsdp.yaml to "
                               "shard the weights too")
    offload = [k for k in ("offload_optimizer_device", "offload_param_device")
               if str(settings.get(k, "none")).lower() != "none"]
    if offload:
        # Optimizer offload swaps the engine's AdamW for DeepSpeedCPUAdam (a C++ build), untested here.
        raise PersonalignError(f"{where}: DeepSpeed {offload[0]} is not supported by the accelerate engine yet; set "
                               "it to none")
    accumulation = settings.get("gradient_accumulation_steps", 1)
    if accumulation not in (1, "auto"):
        # The methods accumulate through forward_backward calls themselves; DeepSpeed would scale the loss again.
        raise PersonalignError(f"{where}: DeepSpeed gradient_accumulation_steps {accumulation} is not supported; set "
                               "it to 1 (the methods' own batch settings decide the batch)")
    import importlib.util

    if importlib.util.find_spec("deepspeed") is None:
        raise PersonalignError(f"{where}: DeepSpeed is not installed; pip install 'personalign[deepspeed]'")


def deepspeed_wanted() -> bool:
    """accelerate's switch, which `accelerate launch` sets from a DeepSpeed config."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def fsdp_wanted() -> bool:
    """accelerate's own switch, which `accelerate launch` sets from an FSDP config (on GPUs and CPUs alike)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def distributed_kind() -> str:
    """How `accelerate launch` told this process to distribute (ddp, fsdp, deepspeed-zeroN), for env.json."""
    if deepspeed_wanted():
        stage = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
        return f"deepspeed-zero{stage}" if stage else "deepspeed"
    return "fsdp" if fsdp_wanted() else "ddp"


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
    if getattr(config.distributed_type, "value", "") == "DEEPSPEED":
        check_deepspeed(config.deepspeed_config or {}, where)
    return config


def launch_env(config_file: str | Path, num_processes: int) -> dict[str, str]:
    """The accelerate settings `accelerate launch --config_file FILE` hands its processes (ACCELERATE_USE_FSDP and
    FSDP_*, or ACCELERATE_USE_DEEPSPEED and ACCELERATE_DEEPSPEED_*), from accelerate's own translation of the
    file: for starting the processes with torchrun directly, as the tests and bench/accelerate_step.py do."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(config_file), "--num_processes",
                                               str(num_processes), "train.py"])
    args, defaults, _ = _validate_launch_command(args)
    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)  # as launch_command does
        env = prepare_deepspeed_cmd_env(args)[1]
    else:
        env = prepare_multi_gpu_env(args)
    return {k: v for k, v in env.items() if k.startswith(("FSDP_", "ACCELERATE_USE_", "ACCELERATE_DEEPSPEED_",
                                                          "ACCELERATE_GRADIENT_"))}


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
