"""CLI smoke tests with typer's runner, on a tiny model saved to disk (the real model is tested elsewhere)."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from conftest import make_tiny_llama
from personalign.cli.main import app

runner = CliRunner()


@pytest.fixture
def tiny_model_dir(chat_tokenizer, tmp_path):
    path = tmp_path / "tiny-model"
    make_tiny_llama(chat_tokenizer).save_pretrained(path)
    chat_tokenizer.save_pretrained(path)
    return path


def test_every_command_has_help():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    commands = [line.split()[1] for line in result.output.splitlines() if line.startswith("│ ") and line.split()[1:]]
    assert {"generate", "compare", "demo"} <= set(commands)
    for command in ("generate", "compare", "demo"):
        sub = runner.invoke(app, [command, "--help"])
        assert sub.exit_code == 0 and "--" in sub.output


def test_generate_prints_a_completion(tiny_model_dir, example_profile_path):
    result = runner.invoke(app, [
        "generate", "--profile", str(example_profile_path), "--method", "prompt", "--prompt", "Thank Jo.",
        "--model", str(tiny_model_dir), "--max-new-tokens", "6", "--seed", "1", "--dtype", "fp32",
    ])
    assert result.exit_code == 0, result.output
    assert result.output.strip()


def test_compare_writes_run_dir_and_table(tiny_model_dir, example_profile_path, tmp_path):
    cfg = tmp_path / "compare.yaml"
    cfg.write_text(yaml.safe_dump({"sampling": {"max_new_tokens": 5}, "model": {"dtype": "fp32"}}))
    result = runner.invoke(app, [
        "compare", "--profile", str(example_profile_path), "--methods", "base,prompt", "--n-prompts", "2",
        "--model", str(tiny_model_dir), "--out", str(tmp_path / "runs"), "--config", str(cfg),
    ])
    assert result.exit_code == 0, result.output
    assert "methods × constraint compliance" in result.output
    run = tmp_path / "runs"  # --out is the run dir itself
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["sampling"]["max_new_tokens"] == 5 and resolved["model"]["model"] == str(tiny_model_dir)
    rows = [json.loads(x) for x in (run / "outputs.jsonl").read_text().splitlines()]
    assert {(r["method"], r["prompt"]) for r in rows} == {
        (m, p) for m in ("base", "prompt") for p in {r["prompt"] for r in rows}
    } and len(rows) == 4
    assert (run / "env.json").is_file() and (run / "summary.json").is_file()
    summary = json.loads((run / "summary.json").read_text())["methods"]
    assert set(summary) == {"base", "prompt"} and 0.0 <= summary["base"]["compliance"] <= 1.0


def test_bad_input_is_one_line_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: X\ntask: emails\n")
    result = runner.invoke(app, ["compare", "--profile", str(bad), "--model", "nowhere"])
    assert result.exit_code == 2
    assert "field 'demonstrations' is missing" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(app, ["generate", "--prompt", "x", "--method", "nonsense", "--profile", str(bad)])
    assert result.exit_code == 2
