"""The accelerate launcher glue: the arguments it builds, the config files it ships, and its exit codes."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from personalign.engines.launch import (
    ENTRY_MODULE,
    _exit_code,
    check_accelerate_config,
    launch_args,
    load_accelerate_config,
)
from personalign.errors import PersonalignError

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "accelerate"


def test_launch_args_run_the_command_as_a_module_on_a_fresh_port():
    args = launch_args(["personalize", "--config", "c.yaml"], 2, None, port=12345)
    assert args[-5:] == ["-m", ENTRY_MODULE, "personalize", "--config", "c.yaml"]
    assert args[args.index("--main_process_port") + 1] == "12345"
    assert args[args.index("--num_processes") + 1] == "2"
    assert "--multi_gpu" in args  # several workers on one machine start through torchrun's launcher
    assert "--multi_gpu" not in launch_args(["personalize"], 1, None, port=1)
    # with a config file, the file says how to distribute (and --num-processes, when given, overrides it)
    with_file = launch_args(["personalize"], None, "ddp.yaml", port=1)
    assert "--multi_gpu" not in with_file and "--num_processes" not in with_file
    assert with_file[with_file.index("--config_file") + 1] == "ddp.yaml"


@pytest.mark.parametrize("name", ["ddp.yaml", "fsdp.yaml", "deepspeed-zero2.yaml"])
def test_shipped_configs_are_valid_for_accelerate_launch(name, monkeypatch):
    """Each file passes accelerate's own config loader and its launch-command check, which turn the file into
    the launcher's settings (unknown keys or values fail there)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    config = load_accelerate_config(CONFIGS / name)
    args = launch_command_parser().parse_args(["--config_file", str(CONFIGS / name), "train.py"])
    args, _, _ = _validate_launch_command(args)
    expected = {"ddp.yaml": "MULTI_GPU", "fsdp.yaml": "FSDP", "deepspeed-zero2.yaml": "DEEPSPEED"}[name]
    assert config.distributed_type.value == expected
    if name == "fsdp.yaml":
        # FSDP's settings reach the plugin as environment variables: build the plugin from them, as a run does
        from accelerate.utils import FullyShardedDataParallelPlugin, patch_environment
        from accelerate.utils.launch import prepare_multi_gpu_env

        env = {k: v for k, v in prepare_multi_gpu_env(args).items() if k.startswith(("FSDP_", "ACCELERATE_"))}
        with patch_environment(**env):
            plugin = FullyShardedDataParallelPlugin()
        assert plugin.fsdp_version == 2 and plugin.state_dict_type.name == "FULL_STATE_DICT"
    if name == "deepspeed-zero2.yaml":
        assert args.use_deepspeed and int(args.zero_stage) == 2


def test_bad_configs_and_unsupported_types_fail_with_one_line(tmp_path, monkeypatch):
    with pytest.raises(PersonalignError, match="file not found"):
        load_accelerate_config(tmp_path / "nowhere.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("distributed_type: MULTI_GPU\nnum_proceses: 2\n")
    with pytest.raises(PersonalignError, match=r"bad\.yaml: not a valid accelerate config .*num_proceses"):
        load_accelerate_config(bad)
    check_accelerate_config(CONFIGS / "ddp.yaml")
    check_accelerate_config(CONFIGS / "fsdp.yaml")
    # DeepSpeed: ZeRO 1-2 without offload, accumulation left to the methods (each refusal names the setting)
    if importlib.util.find_spec("deepspeed") is not None:
        check_accelerate_config(CONFIGS / "deepspeed-zero2.yaml")
    shipped = (CONFIGS / "deepspeed-zero2.yaml").read_text()
    for name, old, new, expect in [
        ("zero3", "zero_stage: 2", "zero_stage: 3", "DeepSpeed zero_stage 3 is not supported .* use zero_stage 1 or 2"),
        ("offload", "offload_optimizer_device: none", "offload_optimizer_device: cpu",
         "DeepSpeed offload_optimizer_device is not supported .* set it to none"),
        ("gas", "gradient_accumulation_steps: 1", "gradient_accumulation_steps: 4",
         "DeepSpeed gradient_accumulation_steps 4 is not supported; set it to 1"),
    ]:
        assert old in shipped
        (tmp_path / f"{name}.yaml").write_text(shipped.replace(old, new))
        with pytest.raises(PersonalignError, match=rf"^--accelerate-config .*{name}\.yaml: {expect}"):
            check_accelerate_config(tmp_path / f"{name}.yaml")
    find_spec = importlib.util.find_spec  # deepspeed absent, as without the optional extra
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "deepspeed" else find_spec(name, *args))
    with pytest.raises(PersonalignError, match=r"deepspeed-zero2\.yaml: DeepSpeed is not installed; pip install "
                                               r"'personalign\[deepspeed\]'$"):
        check_accelerate_config(CONFIGS / "deepspeed-zero2.yaml")
    # FSDP1 (a config without fsdp_version 2): its flat parameters cannot mix LoRA's trainable and frozen weights
    fsdp1 = tmp_path / "fsdp1.yaml"
    fsdp1.write_text((CONFIGS / "fsdp.yaml").read_text().replace("fsdp_version: 2", "fsdp_version: 1"))
    with pytest.raises(PersonalignError, match=r"fsdp1\.yaml: fsdp_version 1 is not supported.*fsdp_version: 2"):
        check_accelerate_config(fsdp1)


def test_exit_codes_of_failed_launches():
    # torchrun's ChildFailedError: rank → failure; rank 0's code wins (it printed the one-line error)
    failed = SimpleNamespace(failures={1: SimpleNamespace(exitcode=1), 0: SimpleNamespace(exitcode=2)})
    assert _exit_code(failed) == 2  # type: ignore[arg-type]
    assert _exit_code(SimpleNamespace(failures={0: SimpleNamespace(exitcode=-2)})) == 130  # type: ignore[arg-type]
    assert _exit_code(subprocess.CalledProcessError(3, ["python"])) == 3
    with pytest.raises(RuntimeError):
        _exit_code(RuntimeError("a bug keeps its traceback"))
