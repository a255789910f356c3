"""`personalign personalize`: one-line errors for bad input, and a trained run that generate/compare use."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import make_tiny_llama


def invoke(*args: str):
    """Run a command in-process (no interpreter start-up); success paths only."""
    from typer.testing import CliRunner

    from personalign.cli.main import app

    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run the real command in a subprocess: shows what a user sees on an error (exit code, stderr)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "personalign.cli.main", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


TOY = {"name": "Zed Toy", "task": "write notes", "constraints": {"sign_off": "Cheers,\nZed"},
       "demonstrations": [{"prompt": f"Greet {n}.", "output": f"Hi {n}.\n\nCheers,\nZed"} for n in ("Al", "Bo")],
       "eval_prompts": ["Greet Gus."]}


def test_profile_without_demonstrations_stops_with_one_line(tmp_path):
    profile = tmp_path / "empty.yaml"
    profile.write_text(yaml.safe_dump({**TOY, "demonstrations": []}))
    result = cli("personalize", "--profile", str(profile), "--method", "sft", cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "demonstrations" in lines[0] and "empty" in lines[0]
    assert "Traceback" not in result.stderr


def test_pair_file_with_missing_field_stops_with_one_line(tmp_path):
    profile = tmp_path / "toy.yaml"
    profile.write_text(yaml.safe_dump(TOY))
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "Greet Al.", "rejected": "Yo."}) + "\n")
    result = cli("personalize", "--profile", str(profile), "--method", "dpo", "--pairs", str(pairs), cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "pairs.jsonl:1" in lines[0] and "'chosen'" in lines[0]


@pytest.fixture
def trained_run(tmp_path, chat_tokenizer) -> tuple[Path, Path, Path]:
    model = tmp_path / "tiny"
    make_tiny_llama(chat_tokenizer, seed=3).save_pretrained(model)
    chat_tokenizer.save_pretrained(model)
    profile = tmp_path / "toy.yaml"
    profile.write_text(yaml.safe_dump(TOY))
    config = tmp_path / "sft.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"model": str(model), "dtype": "fp32", "device": "cpu"},
        "method_config": {"max_steps": 2, "checkpoint_every": 1, "batch_size": 2, "synthetic": {"n_keep": 0}},
    }))
    run = tmp_path / "run"
    invoke("personalize", "--profile", str(profile), "--method", "sft", "--config", str(config), "--out", str(run))
    return run, profile, model


def test_personalize_then_generate_resume_and_compare(trained_run, tmp_path):
    run, profile, model = trained_run
    for name in ("config.yaml", "env.json", "metrics.jsonl", "method.json", "adapter/adapter_config.json"):
        assert (run / name).is_file(), name
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["method"] == "sft" and resolved["method_config"]["max_steps"] == 2
    assert json.loads((run / "env.json").read_text())["seed"] == 0

    # What a user sees: the completion, without transformers' "Loading weights" bars or peft's FutureWarning.
    shown = cli("generate", "--run", str(run), "--prompt", "Greet Gus.", "--max-new-tokens", "4", "--temperature",
                "0", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "Loading weights" not in shown.stderr and "is_gradient_checkpointing" not in shown.stderr, shown.stderr

    # --resume on a finished run (saved settings: the tiny model, 2 steps) trains no further step.
    steps_before = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    resumed = invoke("personalize", "--out", str(run), "--resume")  # its saved settings apply
    assert "finished training earlier; steps already done are skipped" in resumed.stderr
    steps_after = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert steps_after == steps_before

    compare_cfg = tmp_path / "compare.yaml"
    compare_cfg.write_text(yaml.safe_dump({
        "profile": str(profile), "methods": ["base"], "runs": [str(run)], "out": str(tmp_path / "cmp"),
        "model": {"model": str(model), "dtype": "fp32", "device": "cpu"},
        "sampling": {"max_new_tokens": 4, "temperature": 0.0},
    }))
    invoke("compare", "--config", str(compare_cfg))
    summary = json.loads((tmp_path / "cmp" / "summary.json").read_text())
    assert set(summary["methods"]) == {"base", "run:run"}


def test_personalize_says_what_it_trains_on_before_training(tmp_path, chat_tokenizer):
    from typer.testing import CliRunner

    from personalign.cli.main import app

    model = tmp_path / "tiny"
    make_tiny_llama(chat_tokenizer, hidden=16, layers=1).save_pretrained(model)
    chat_tokenizer.save_pretrained(model)
    profile = tmp_path / "toy.yaml"
    profile.write_text(yaml.safe_dump(TOY))
    config = tmp_path / "sft.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"model": str(model), "dtype": "fp32", "device": "cpu"},
        "method_config": {"max_steps": 1, "batch_size": 2, "synthetic": {"n_candidates": 2, "n_keep": 2,
                                                                         "max_new_tokens": 8}},
    }))
    result = CliRunner().invoke(app, ["personalize", "--profile", str(profile), "--method", "sft", "--config",
                                      str(config), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    err = result.stderr
    assert "data: 2 demonstrations from the profile" in err
    line = next(x for x in err.splitlines() if x.startswith("synthetic: "))
    assert "generated" in line and "rejected" in line and "training on" in line
    assert "warning: " in err and "below 8" in err  # 2 demonstrations + at most 2 synthetic rows
    assert err.index("synthetic: ") < err.index("warning: ")


def test_engine_tinker_without_key_or_service_stops_before_any_run_dir(tmp_path, monkeypatch):
    """`--engine tinker`: a missing key, then an unreachable service, each one line (exit 2), nothing created."""
    from personalign.engines.tinker_server import free_port

    profile = tmp_path / "toy.yaml"
    profile.write_text(yaml.safe_dump(TOY))
    args = ("personalize", "--profile", str(profile), "--method", "sft", "--engine", "tinker",
            "--model", "Qwen/Qwen3-8B", "--out", str(tmp_path / "run"))
    monkeypatch.delenv("TINKER_API_KEY", raising=False)
    result = cli(*args, cwd=tmp_path)
    assert result.returncode == 2 and "TINKER_API_KEY is not set" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    monkeypatch.setenv("TINKER_API_KEY", "tml-test")
    result = cli(*args, "--tinker-url", f"http://127.0.0.1:{free_port()}", cwd=tmp_path)
    assert result.returncode == 2 and "unreachable" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
