"""`personalize --engine accelerate --num-processes 2` for real (2 CPU processes, gloo): one run dir written once by
rank 0, the one-process adapter within a stated tolerance, `generate --run` on it, and an exact resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import crash_after_checkpoint, make_tiny_llama

REPO = Path(__file__).resolve().parents[2]
PROFILE = {"name": "Zed Toy", "task": "write notes", "constraints": {"sign_off": "Cheers,\nZed"},
           "demonstrations": [{"prompt": f"Greet {n}.", "output": f"Hi {n}, good to see you.\n\nCheers,\nZed"}
                              for n in ("Al", "Bo", "Cy", "Di", "Ed")],
           "eval_prompts": ["Greet Gus."]}


def personalize(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "OMP_WAIT_POLICY": "PASSIVE", "COLUMNS": "200"}
    env.pop("PERSONALIGN_LAUNCHED", None)
    return subprocess.run([sys.executable, "-m", "personalign.cli.main", "personalize", *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=300)


@pytest.fixture
def setup(tmp_path, chat_tokenizer) -> tuple[Path, Path]:
    model = tmp_path / "tiny"
    make_tiny_llama(chat_tokenizer, seed=3).save_pretrained(model)
    chat_tokenizer.save_pretrained(model)
    (tmp_path / "toy.yaml").write_text(yaml.safe_dump(PROFILE))
    return tmp_path, model


def config(tmp: Path, model: Path, name: str, **method: object) -> Path:
    # 5 rows, batch 5: shards of 3 and 2 rows, so a loss or gradient scaled per shard instead of per batch shows.
    fields = {"max_steps": 3, "checkpoint_every": 1, "batch_size": 5, "lr": 1e-2, "synthetic": {"n_keep": 0},
              "lora": {"r": 4, "dropout": 0.0}, **method}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"model": {"model": str(model), "dtype": "fp32", "device": "cpu"},
                                    "method_config": fields}))
    return path


def steps(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_write_one_run_dir_with_the_one_process_adapter(setup):
    tmp, model = setup
    cfg = config(tmp, model, "sft")
    one = personalize("--profile", "toy.yaml", "--method", "sft", "--config", str(cfg), "--out", "one", cwd=tmp)
    assert one.returncode == 0, one.stderr[-3000:]
    two = personalize("--profile", "toy.yaml", "--method", "sft", "--config", str(cfg), "--out", "two",
                      "--engine", "accelerate", "--num-processes", "2", cwd=tmp)
    assert two.returncode == 0, two.stderr[-3000:]
    # rank 0 alone reports: one "training" line, one "run dir" line (rank 1 is silent)
    assert two.stdout.count("run dir:") == 1 and two.stdout.count("training on") == 1, two.stdout

    run = tmp / "two"
    files = lambda p: sorted(str(f.relative_to(p)) for f in p.rglob("*") if f.is_file())  # noqa: E731
    extra = {f"checkpoints/step-00000{s}/rng_per_process.pt" for s in (2, 3)}  # both processes' RNG streams
    assert set(files(run)) - set(files(tmp / "one")) == extra
    assert not [f for f in files(run) if "/." in f or f.startswith(".")]  # no temp files left by a second writer
    env = json.loads((run / "env.json").read_text())
    assert env["processes"] == 2 and env["engine"] == "accelerate" and env["distributed"] == "ddp"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["method_config"]["engine"] == "accelerate" and saved["num_processes"] == 2
    rows, base_rows = steps(run), steps(tmp / "one")
    assert [r.get("step") for r in rows] == [r.get("step") for r in base_rows] == [1, 2, 3, None]  # once each
    # Tolerance: the shards' sums reduce in another order than one process's (fp32, ~1e-7 relative), so losses
    # agree to 1e-5 relative and adapter weights to 1e-4 of the largest weight; a per-shard mean instead of the
    # batch mean (the bug) moves step 2's loss by more than 1e-3.
    for r, b in zip(rows[:3], base_rows[:3], strict=True):
        assert r["loss"] == pytest.approx(b["loss"], rel=1e-5)
    assert rows[2]["loss"] < rows[0]["loss"] - 1e-3  # it trained
    a, b = load_file(run / "adapter" / "adapter_model.safetensors"), load_file(
        tmp / "one" / "adapter" / "adapter_model.safetensors")
    largest = max(float(v.abs().max()) for v in b.values())
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-4 * largest

    from typer.testing import CliRunner

    from personalign.cli.main import app

    def generate(path: Path) -> str:
        result = CliRunner().invoke(app, ["generate", "--run", str(path), "--prompt", "Greet Gus.",
                                          "--max-new-tokens", "8", "--temperature", "0"])
        assert result.exit_code == 0, (result.output, result.exception)
        return result.stdout

    assert generate(run) == generate(tmp / "one")  # greedy text from the 2-process adapter = the 1-process one's


@pytest.mark.slow
def test_resume_under_two_processes_reproduces_the_uninterrupted_run(setup):
    tmp, model = setup
    # Dropout on: each process's RNG stream (its own shard's masks) must be restored, not only rank 0's.
    cfg = config(tmp, model, "sft-dropout", max_steps=4, checkpoint_every=2, keep_checkpoints=3,
                 lora={"r": 4, "dropout": 0.2})
    # The first run takes its 2 processes from the shipped DDP config file; the resume from --num-processes.
    ddp = str(REPO / "configs" / "accelerate" / "ddp.yaml")
    full = personalize("--profile", "toy.yaml", "--method", "sft", "--config", str(cfg), "--out", "full",
                       "--engine", "accelerate", "--accelerate-config", ddp, cwd=tmp)
    assert full.returncode == 0, full.stderr[-3000:]
    crashed = crash_after_checkpoint(tmp / "full", tmp / "crashed", step=2)  # nothing after it happened
    resumed = personalize("--out", "crashed", "--resume", "--engine", "accelerate", "--num-processes", "2", cwd=tmp)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "continuing from checkpoints/step-000002" in resumed.stderr

    def losses(run: Path) -> dict[int, float]:
        return {r["step"]: r["loss"] for r in steps(run) if r.get("phase") == "sft"}

    assert json.loads((crashed / "env.json").read_text())["processes"] == 2
    assert losses(crashed) == losses(tmp / "full")  # bit-identical
    a = torch.load(tmp / "full" / "checkpoints" / "step-000004" / "weights.pt")
    b = torch.load(crashed / "checkpoints" / "step-000004" / "weights.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(("args", "expect"), [
    (["--num-processes", "2"], "--num-processes: only used with --engine accelerate"),
    (["--accelerate-config", "{configs}/ddp.yaml"], "--accelerate-config: only used with --engine accelerate"),
    (["--engine", "accelerate", "--num-processes", "0"], "--num-processes"),
    (["--engine", "accelerate", "--method", "rlaif"], "--method rlaif cannot run data-parallel yet"),
    (["--engine", "accelerate", "--accelerate-config", "{tmp}/zero3.yaml"],
     "zero3.yaml: DeepSpeed zero_stage 3 is not supported by the accelerate engine; use zero_stage 1 or 2"),
    (["--engine", "accelerate", "--accelerate-config", "{tmp}/none.yaml"], "none.yaml: file not found"),
    (["--engine", "acelerate"], "--engine"),
])
def test_bad_engine_settings_stop_with_one_line_before_anything_starts(args, expect, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from personalign.cli.main import app

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PERSONALIGN_LAUNCHED", raising=False)
    (tmp_path / "toy.yaml").write_text(yaml.safe_dump(PROFILE))
    zero3 = yaml.safe_load((REPO / "configs" / "accelerate" / "deepspeed-zero2.yaml").read_text())
    zero3["deepspeed_config"]["zero_stage"] = 3
    (tmp_path / "zero3.yaml").write_text(yaml.safe_dump(zero3))
    fill = {"configs": str(REPO / "configs" / "accelerate"), "tmp": str(tmp_path)}
    args = [a.format(**fill) for a in args]
    method = [] if "--method" in args else ["--method", "sft"]
    result = CliRunner().invoke(app, ["personalize", "--profile", "toy.yaml", *method, "--out", "run", *args])
    assert result.exit_code == 2, (result.output, result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_ditto_on_two_processes_matches_one_process(setup):
    """DITTO exercises every data-parallel path: the warm start, π_ref saved by rank 0 and loaded by all, sampling
    sharded over the processes and gathered, π_ref scoring sharded, and DPO's custom loss over gathered log-probs.
    Greedy sampling makes the samples (so the whole run) the one-process run's."""
    tmp, model = setup
    cfg = tmp / "ditto.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"model": str(model), "dtype": "fp32", "device": "cpu"}, "method_config": {
        "sft_steps": 2, "sft_lr": 1e-2, "lr": 1e-2, "batch_size": 5, "iterations": 2, "steps_per_iteration": 2,
        "samples_per_prompt": 1, "pairs_per_step": 4, "sample_max_new_tokens": 8, "sample_temperature": 0.0,
        "max_length": 128, "lora": {"r": 4, "dropout": 0.0}}}))
    base = ["--profile", "toy.yaml", "--method", "ditto", "--config", str(cfg)]
    one = personalize(*base, "--out", "one", cwd=tmp)
    assert one.returncode == 0, one.stderr[-3000:]
    two = personalize(*base, "--out", "two", "--engine", "accelerate", "--num-processes", "2", cwd=tmp)
    assert two.returncode == 0, two.stderr[-3000:]
    rows, base_rows = steps(tmp / "two"), steps(tmp / "one")
    assert [r.get("phase") for r in rows] == [r.get("phase") for r in base_rows]  # each row once
    dpo = [(r["dpo_loss"], b["dpo_loss"]) for r, b in zip(rows, base_rows, strict=True) if r.get("phase") == "ditto"]
    assert len(dpo) == 2 and all(a == pytest.approx(b, rel=1e-5) for a, b in dpo)
    a, b = (load_file(tmp / run / "adapter" / "adapter_model.safetensors") for run in ("two", "one"))
    largest = max(float(v.abs().max()) for v in b.values())
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-4 * largest  # seen 1.2e-6 against 0.22
