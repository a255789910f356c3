"""`personalign judge validate` and `personalign reward train` end to end (small, seeded)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from personalign.cli.main import app

runner = CliRunner()


def test_judge_validate_rules_on_a_builtin_set(shared_data, tmp_path):
    out = tmp_path / "runs"
    result = runner.invoke(app, ["judge", "validate", "--judge", "rules", "--data", "llmbar-natural,mtbench-human",
                                 "--data-dir", str(shared_data), "--limit", "30", "--n-boot", "50", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "judge rules: agreement" in result.output
    run = out  # --out is the run dir itself
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary) == {"llmbar-natural", "mtbench-human"}
    assert summary["llmbar-natural"]["n"] == 30
    assert (run / "config.yaml").is_file() and (run / "env.json").is_file()
    assert len((run / "outputs.jsonl").read_text().splitlines()) == 60
    # resume the same run: its saved settings apply, finished sets are not judged again
    again = runner.invoke(app, ["judge", "validate", "--out", str(run), "--resume"])
    assert again.exit_code == 0, again.output
    assert "llmbar-natural: done in the earlier run, reused" in again.output
    assert len((run / "outputs.jsonl").read_text().splitlines()) == 60


def test_judge_validate_errors_are_one_line(tmp_path):
    result = runner.invoke(app, ["judge", "validate", "--judge", "rm", "--data", "x.jsonl", "--out", str(tmp_path)])
    assert result.exit_code != 0
    bad = runner.invoke(app, ["judge", "validate", "--judge", "oracle"])
    assert bad.exit_code == 2 and "judge" in bad.output


def test_reward_train_needs_a_profile_for_judge_labels(tmp_path):
    result = runner.invoke(app, ["reward", "train", "--labels", "rules", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--profile" in result.output
    result = runner.invoke(app, ["reward", "train", "--labels", "x.jsonl", "--resume", "--out", str(tmp_path / "no")])
    assert result.exit_code == 2 and "no run to resume" in result.output
