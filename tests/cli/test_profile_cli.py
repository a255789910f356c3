"""`personalign profile infer` end to end on hand-made texts: the YAML loads as a profile and says what it found."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from personalign.cli.main import app
from personalign.profiles.loading import load_profile

runner = CliRunner()


def test_profile_infer_writes_an_editable_profile(tmp_path):
    texts = tmp_path / "mine.jsonl"
    rows = [{"subject": f"Plan {i}", "body": f"Hi Sam,\n\nThe plan for week {i} is ready and the team agreed on it. "
             f"I will share the numbers by Friday.\n\nBest,\nMira"} for i in range(12)]
    texts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "mira.yaml"
    result = runner.invoke(app, ["profile", "infer", "--texts", str(texts), "--name", "Mira K", "--out", str(out)])
    assert result.exit_code == 0, result.output
    profile = load_profile(out)
    assert profile.name == "Mira K" and profile.constraints.sign_off == "Best,\nMira"
    assert len(profile.demonstrations) == 7 and len(profile.eval_prompts) == 2  # 20 % of 12 held out
    held = {e.reference for e in profile.eval_prompts}
    assert not held & {d.output for d in profile.demonstrations}
    assert out.read_text().startswith("# Inferred by `personalign profile infer` from 10 texts")
    assert "pass on 100% of 2 held-out texts" in result.output


def test_profile_infer_errors_in_one_line(tmp_path):
    result = runner.invoke(app, ["profile", "infer", "--texts", str(tmp_path / "nope.jsonl")])
    assert result.exit_code == 2 and "not found" in result.output
    result = runner.invoke(app, ["profile", "infer"])
    assert result.exit_code == 2 and "--texts" in result.output
