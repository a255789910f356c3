"""The CLI end to end: `personalign bench` with the real MiniLM on a handful of texts (the one test that
loads a model), resuming, and `personalign data characterize`; plus flag errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from personalign.cli.main import app

TINY = ["--set", "synthetic.n_users=3", "--set", "synthetic.n_prompts=8", "--set", "synthetic.responses_per_prompt=3",
        "--set", "tax_max_per_source=2"]
# Enough comparisons for MiniLM features to carry the users' tastes; user_2 is the minority.
SMALL = ["--set", "synthetic.n_users=3", "--set", "synthetic.n_prompts=40", "--set", "synthetic.responses_per_prompt=3",
         "--set", "synthetic.minority_frac=0.34", "--set", "tax_max_per_source=2"]


def test_bench_end_to_end_with_minilm_and_resume(tmp_path: Path, tax_root: Path) -> None:
    out = tmp_path / "run"
    args = ["bench", "--dataset", "synthetic", "--methods", "vanilla,personalized,rag-vote", "--quick", "--out",
            str(out), "--data-dir", str(tax_root), "--ks", "2,5", *SMALL]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    res = json.loads((out / "results.json").read_text())
    assert res["dataset"] == "synthetic" and set(res["methods"]) == {"vanilla", "personalized", "rag-vote"}
    assert res["minority_users"] == ["user_2"]
    for r in res["methods"].values():
        assert set(r["per_user"]) == {"user_0", "user_1", "user_2"}
        assert set(r["tax"]) == {"chat", "chat_hard", "safety", "reasoning"}
        assert set(r["adaptation"]) == {"2", "5"}
    van, per = res["methods"]["vanilla"], res["methods"]["personalized"]
    # The users' tastes are learned (a mislabeled or misaligned pipeline scores ~0.5), and only a personalized
    # model serves the minority user, whom the pooled vanilla model gets mostly wrong.
    assert per["mean_acc"] > 0.7 and per["minority_acc"] > van["minority_acc"] + 0.2
    # The baselines come from the test split; the tax is measured against vanilla ("not measurable" here:
    # two pairs per category cannot show a base above chance).
    assert set(res["baselines"]["oracle"]) == {"user_0", "user_1", "user_2"}
    assert all(not d["measurable"] for d in per["tax_drop"].values())
    assert "not measurable" in (out / "table.md").read_text()
    # The general signal: the fixture's 4 helpful pairs (its one harmless dialogue is in the tax half).
    assert res["embedding_cache"]["misses"] > 0 and res["general"]["n_pairs"] == 4
    for name in ("config.yaml", "env.json", "metrics.jsonl", "table.md", "per_user.png", "adaptation.png",
                 "characterization.json"):
        assert (out / name).is_file(), name
    assert "seed" in json.loads((out / "env.json").read_text())
    # A rerun reuses every finished method whose config is unchanged and retrains the one whose option moved;
    # every text comes from the embedding cache.
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "methods").iterdir()}
    again = CliRunner().invoke(app, [*args, "--resume", "--set", "options.personalized.alpha=0.9"])
    assert again.exit_code == 0, again.output
    after = {p.name: p.stat().st_mtime_ns for p in (out / "methods").iterdir()}
    assert {n for n in stamps if after[n] != stamps[n]} == {"personalized.json"}
    res2 = json.loads((out / "results.json").read_text())
    assert res2["embedding_cache"]["misses"] == 0
    assert res2["methods"]["vanilla"]["per_user"] == van["per_user"]


def test_characterize_command(tmp_path: Path) -> None:
    out = tmp_path / "c.json"
    result = CliRunner().invoke(app, ["data", "characterize", "--dataset", "synthetic", "--out", str(out), *TINY[:4]])
    assert result.exit_code == 0, result.output
    assert "disagreement" in result.output and json.loads(out.read_text())["n_users"] == 3


@pytest.mark.parametrize(("args", "match"), [
    (["bench", "--methods", "dpo"], "unknown method"),
    (["bench", "--set", "nonsense=1"], "nonsense: unknown key"),
    (["data", "characterize", "--dataset", "nope"], "unknown data set 'nope'"),
    (["bench", "--ks", "10,many"], "--ks: expected whole numbers"),
])
def test_bad_flags_are_clear_errors(args: list[str], match: str) -> None:
    result = CliRunner().invoke(app, args)
    # PersonalignTyper turns user errors into one red line and exit status 2, no traceback.
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and match in lines[0]


def test_help_everywhere() -> None:
    for args in (["bench", "--help"], ["data", "--help"], ["data", "characterize", "--help"]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0 and "Usage" in result.output
