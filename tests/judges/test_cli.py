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


def test_judge_validate_ties_flag_offers_a_tie_to_the_llm_judge(tmp_path, monkeypatch):
    """`--ties` maps to the config's `ties` and reaches the LLM judge: a judge answering "tie" is then counted
    as tying; without the flag the official A/B format makes that answer unparseable."""
    import personalign.backends.registry as registry
    from personalign.backends.base import GenerationBackend

    class TieBackend(GenerationBackend):
        name = "scripted"

        def generate(self, conversations, sampling, progress=False):
            offered = ["or tie" in c[-1]["content"] for c in conversations]
            return [["Equal. [RESULT] tie" if tie else "Equal. [RESULT] tie (not offered)"] for tie in offered]

        def logprobs(self, conversations, completions):
            raise NotImplementedError

    monkeypatch.setattr(registry, "build_backend", lambda config: TieBackend())
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"p{i}", "a": "x", "b": "y", "label": "tie"}) + "\n"
                             for i in range(3)))
    rates = {}
    for flag in ("--ties", "--no-ties"):
        out = tmp_path / flag.strip("-")
        result = runner.invoke(app, ["judge", "validate", "--judge", "llm", flag, "--data", str(pairs),
                                     "--n-boot", "10", "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert f"ties: {str(flag == '--ties').lower()}" in (out / "config.yaml").read_text()
        summary = json.loads((out / "summary.json").read_text())[str(pairs)]
        rates[flag] = (summary["tie_rate"], summary["unparseable_rate"], summary["accuracy"])
    assert rates == {"--ties": (1.0, 0.0, 1.0), "--no-ties": (0.0, 1.0, 0.0)}
    refused = runner.invoke(app, ["judge", "validate", "--judge", "rules", "--ties", "--data", str(pairs)])
    assert refused.exit_code == 2 and "--ties: not used by --judge rules" in refused.output
