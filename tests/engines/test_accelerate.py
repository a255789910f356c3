"""The accelerate engine for real: 2 CPU processes on gloo give the one-process loss and weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("ddp_worker.py")
REPO = Path(__file__).resolve().parents[2]


def _run(args: list[str], out: Path, processes: int) -> tuple[list[float], dict[str, torch.Tensor]]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads((out / "losses.json").read_text())
    assert saved["processes"] == processes  # really data-parallel, not two copies of a one-process run
    return saved["losses"], torch.load(out / "weights.pt")


def test_two_gloo_processes_match_one_process(default_model_dir, tmp_path):
    # accelerate's own launcher needs mpirun for several CPU processes; torchrun starts them the same way
    # `accelerate launch --multi_gpu` does on GPUs, and Accelerator picks the gloo process group up from it.
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    base_losses, base_weights = _run([sys.executable, str(WORKER), str(default_model_dir), str(one), "local"], one, 1)
    ddp_losses, ddp_weights = _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                                    "--master_port", "29613", str(WORKER), str(default_model_dir), str(two),
                                    "accelerate"], two, 2)
    # Tolerance: the shards' reductions sum in another order than one process's (fp32 rounding, ~1e-7 relative),
    # so losses agree to 1e-5, each step's gradient to 1e-4 of its largest entry (a gradient off by the process
    # count, the bug this guards against, is off by 50-100 %), and the updated weights to 1e-3 of the largest move.
    assert ddp_losses == pytest.approx(base_losses, rel=1e-5, abs=1e-6)
    for base, ddp in zip(base_weights["grads"], ddp_weights["grads"], strict=True):
        assert base.keys() == ddp.keys() and base
        largest = max(float(g.abs().max()) for g in base.values())
        assert max(float((ddp[k] - base[k]).abs().max()) for k in base) <= 1e-4 * largest
    moved, ddp_moved = base_weights["moved"], ddp_weights["moved"]
    largest = max(float(d.abs().max()) for d in moved.values())
    assert largest > 1e-4  # the weights did move
    assert max(float((ddp_moved[k] - moved[k]).abs().max()) for k in moved) <= 1e-3 * largest


SHARDED_WORKER = Path(__file__).with_name("sharded_worker.py")
CONFIGS = REPO / "configs" / "accelerate"
FSDP_CONFIG = CONFIGS / "fsdp.yaml"
DEEPSPEED_CONFIG = CONFIGS / "deepspeed-zero2.yaml"


@pytest.mark.parametrize(("engine_name", "config"), [("fsdp", FSDP_CONFIG), ("deepspeed", DEEPSPEED_CONFIG)],
                         ids=["fsdp", "deepspeed"])
def test_sharded_training_on_two_gloo_processes_matches_one_process(engine_name, config, default_model_dir,
                                                                    chat_tokenizer, tmp_path):
    """FSDP2 and DeepSpeed ZeRO-2 through the engine for real: the same global batch gives the one-process losses,
    gradients and weights; rank 0 writes a loadable adapter and the local engine's checkpoint files; resume is
    exact."""
    import importlib.util

    from peft import PeftModel
    from safetensors.torch import load_file

    from conftest import make_tiny_llama
    from personalign.engines.local import apply_lora, trainable_state

    if engine_name == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        pytest.skip("deepspeed is not installed (pip install 'personalign[deepspeed]')")
    spec = importlib.util.spec_from_file_location("sharded_worker", SHARDED_WORKER)
    worker = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(worker)  # type: ignore[union-attr]
    init = tmp_path / "init"
    init.mkdir()
    model = apply_lora(make_tiny_llama(chat_tokenizer, seed=7), worker.LORA)
    with torch.no_grad():  # LoRA B off zero, so every adapter weight gets a gradient
        gen = torch.Generator().manual_seed(1)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    initial = trainable_state(model)
    torch.save(initial, init / "weights.pt")

    def run(engine: str, processes: int) -> tuple[dict, Path]:
        out = tmp_path / engine
        out.mkdir()
        env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        command = [sys.executable, str(SHARDED_WORKER), str(default_model_dir), str(init), str(out), engine]
        if engine != "local":
            from personalign.engines.launch import launch_env

            env.update(launch_env(config, processes))
            command[1:1] = ["-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port",
                            str(_free_port())]
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        record = json.loads((out / "record.json").read_text())
        assert record["processes"] == processes
        return record, out

    base, base_dir = run("local", 1)
    two, run_dir = run(engine_name, 2)
    # Tolerance as for DDP: shard sums reduce in another order (fp32, ~1e-7 relative); a gradient off by the
    # process count (the bug guarded against) is off by 50-100 %.
    assert two["losses"] == pytest.approx(base["losses"], rel=1e-5, abs=1e-6)
    assert two["grad_norms"] == pytest.approx(base["grad_norms"], rel=1e-5)  # the clip saw every shard
    # DeepSpeed reduces the gradients inside its step (none to read before it): its clip norms above, and the
    # weights and Adam moments at the checkpoint and at the end below, check them there.
    for b, f in zip(torch.load(base_dir / "grads.pt"), torch.load(run_dir / "grads.pt"), strict=True):
        if engine_name == "deepspeed":
            break
        assert b.keys() == f.keys() and b
        largest = max(float(g.abs().max()) for g in b.values())
        assert max(float((f[k] - b[k]).abs().max()) for k in b) <= 1e-4 * largest
    for b, f in zip(base["ref_logprobs"], two["ref_logprobs"], strict=True):  # padded, batched scoring
        assert f == pytest.approx(b, abs=1e-5)
    assert two["samples"] == base["samples"]  # greedy tokens, shards of 2 and 1 prompts
    # The checkpoint is the local engine's: same files, keys and (index-keyed) optimizer layout.
    for name in ("ckpt", "final"):
        bw, fw = torch.load(base_dir / name / "weights.pt"), torch.load(run_dir / name / "weights.pt")
        assert bw.keys() == fw.keys() == initial.keys()
        moved = max(float((bw[k] - initial[k]).abs().max()) for k in bw)
        assert moved > 1e-4  # it trained
        assert max(float((fw[k] - bw[k]).abs().max()) for k in bw) <= 1e-3 * moved
        bo = torch.load(base_dir / name / "optimizer.pt", weights_only=False)["optimizer"]
        fo = torch.load(run_dir / name / "optimizer.pt", weights_only=False)["optimizer"]
        assert bo["state"].keys() == fo["state"].keys() and bo["param_groups"][0]["params"] == \
            fo["param_groups"][0]["params"]
        for i, state in bo["state"].items():
            assert torch.allclose(fo["state"][i]["exp_avg"], state["exp_avg"], rtol=1e-3, atol=1e-7)
    # Resume from the checkpoint on as many processes: the DPO step again, bit for bit.
    assert two["resumed_loss"] == two["losses"][-1]
    final, resumed = torch.load(run_dir / "final" / "weights.pt"), torch.load(run_dir / "resumed" / "weights.pt")
    assert all(torch.equal(final[k], resumed[k]) for k in final)
    # Rank 0's adapter is an ordinary peft folder with the trained weights.
    assert two["manifest"] == {"adapter": "adapter"}
    loaded = PeftModel.from_pretrained(make_tiny_llama(chat_tokenizer, seed=7), str(run_dir / "adapter"))
    state = trainable_state(loaded) if any(p.requires_grad for p in loaded.parameters()) else \
        {n: p for n, p in loaded.named_parameters() if "lora_" in n}
    assert state.keys() == final.keys()
    assert all(torch.equal(state[k], final[k]) for k in final)
    saved = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    assert saved.keys() == load_file(base_dir / "adapter" / "adapter_model.safetensors").keys()


def test_full_fine_tuning_under_fsdp_stops_with_one_line(tiny_backend, monkeypatch):
    from personalign.engines.accelerate import AccelerateEngine
    from personalign.engines.base import LoraSettings
    from personalign.errors import PersonalignError

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch` with an FSDP config sets
    with pytest.raises(PersonalignError, match=r"^lora\.enabled: false \(full fine-tuning\) is not supported under "
                                               r"FSDP yet; .* use configs/accelerate/ddp\.yaml$"):
        AccelerateEngine(tiny_backend, LoraSettings(enabled=False))


def _free_port() -> int:
    from personalign.engines.launch import free_port

    return free_port()


@pytest.mark.slow
@pytest.mark.parametrize("config", [FSDP_CONFIG, DEEPSPEED_CONFIG], ids=["fsdp", "deepspeed"])
def test_personalize_with_a_sharded_config_matches_one_process_and_resumes_under_ddp(config, chat_tokenizer,
                                                                                     tmp_path):
    """The product route: `personalize --engine accelerate --accelerate-config configs/accelerate/fsdp.yaml` (or
    deepspeed-zero2.yaml) gives the one-process run; its checkpoint (the local engine's layout) resumes under DDP."""
    import importlib.util

    import yaml
    from safetensors.torch import load_file

    from conftest import crash_after_checkpoint, make_tiny_llama

    if config == DEEPSPEED_CONFIG and importlib.util.find_spec("deepspeed") is None:
        pytest.skip("deepspeed is not installed (pip install 'personalign[deepspeed]')")

    make_tiny_llama(chat_tokenizer, seed=3).save_pretrained(tmp_path / "tiny")
    chat_tokenizer.save_pretrained(tmp_path / "tiny")
    (tmp_path / "toy.yaml").write_text(yaml.safe_dump({
        "name": "Zed Toy", "task": "write notes", "constraints": {"sign_off": "Cheers,\nZed"},
        "demonstrations": [{"prompt": f"Greet {n}.", "output": f"Hi {n}, good to see you.\n\nCheers,\nZed"}
                           for n in ("Al", "Bo", "Cy", "Di", "Ed")], "eval_prompts": ["Greet Gus."]}))
    # batch 5 over 2 processes: shards of 3 and 2
    (tmp_path / "sft.yaml").write_text(yaml.safe_dump({
        "model": {"model": str(tmp_path / "tiny"), "dtype": "fp32", "device": "cpu"},
        "method_config": {"max_steps": 4, "checkpoint_every": 2, "keep_checkpoints": 3, "batch_size": 5, "lr": 1e-2,
                          "synthetic": {"n_keep": 0}, "lora": {"r": 4, "dropout": 0.0}}}))

    def personalize(*args: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
               "OMP_WAIT_POLICY": "PASSIVE"}
        env.pop("PERSONALIGN_LAUNCHED", None)
        result = subprocess.run([sys.executable, "-m", "personalign.cli.main", "personalize", *args],
                                capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]

    def losses(run: str) -> list[float]:
        rows = [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        return [r["loss"] for r in rows if r.get("phase") == "sft"]

    base = ["--profile", "toy.yaml", "--method", "sft", "--config", "sft.yaml"]
    personalize(*base, "--out", "one")
    personalize(*base, "--out", "two", "--engine", "accelerate", "--accelerate-config", str(config),
                "--num-processes", "2")
    # the processes got the file's settings (the engine tests above show what the engine does with them)
    kind = {FSDP_CONFIG: "fsdp", DEEPSPEED_CONFIG: "deepspeed-zero2"}[config]
    assert json.loads((tmp_path / "two" / "env.json").read_text())["distributed"] == kind
    # tolerance as in the engine test above
    assert losses("two") == pytest.approx(losses("one"), rel=1e-5)
    a, b = (load_file(tmp_path / run / "adapter" / "adapter_model.safetensors") for run in ("two", "one"))
    largest = max(float(v.abs().max()) for v in b.values())
    assert a.keys() == b.keys() and max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-4 * largest
    # A crash after the step-2 checkpoint, resumed on 2 DDP processes.
    crashed = crash_after_checkpoint(tmp_path / "two", tmp_path / "crashed", step=2)
    personalize("--out", "crashed", "--resume", "--engine", "accelerate", "--accelerate-config",
                str(REPO / "configs" / "accelerate" / "ddp.yaml"), "--num-processes", "2")
    assert losses("crashed") == pytest.approx(losses("two"), rel=1e-5)
    c = load_file(crashed / "adapter" / "adapter_model.safetensors")
    assert max(float((c[k] - a[k]).abs().max()) for k in a) <= 1e-4 * largest
