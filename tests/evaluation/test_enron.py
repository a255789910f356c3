"""The Enron benchmark on a small hand-made fixture (never the real data): the split keeps every test email off
the training side, prompts are derived and scored on what they do not give away, and a tiny run completes."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import make_tiny_llama
from personalign.cli.main import app
from personalign.config import ModelConfig, SamplingConfig
from personalign.errors import DataError
from personalign.evaluation.enron import (
    EnronBenchConfig,
    UnseenPartEvaluator,
    load_enron,
    run_enron_benchmark,
    sender_profile,
    split_sender,
)
from personalign.evaluation.evaluators import RougeLEvaluator

HABITS = {
    "alpha-a": ("Hi team,", "Thanks,\nAl", ["pipeline", "gas", "meter", "volume", "transport"]),
    "beta-b": ("Jeff,", "Bea", ["contract", "legal", "clause", "signature", "draft"]),
    "gamma-g": ("", "G.", ["game", "tickets", "weekend", "dinner", "party"]),
}


def write_enron_fixture(root: Path, per_sender: int = 16) -> Path:
    rng = random.Random(0)
    rows = []
    for sender, (greeting, closing, words) in HABITS.items():
        for i in range(per_sender):
            body = " ".join(rng.choice(words) for _ in range(25))
            text = f"{greeting}\n\nAbout the {words[i % 5]} number {i}. {body.capitalize()}.\n\n{closing}".strip()
            rows.append({"sender": sender, "subject": f"Re: {words[i % 5]} {i}" if i % 2 else "", "body": text})
    rows.append(dict(rows[0]))  # an exact duplicate email: must never straddle the split
    (root / "enron").mkdir(parents=True)
    (root / "enron" / "enron_sent.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_split_never_puts_a_test_email_on_the_training_side(tmp_path):
    data = load_enron(write_enron_fixture(tmp_path / "data"))
    assert list(data) == ["alpha-a", "beta-b", "gamma-g"]
    for seed in range(5):
        split = split_sender("alpha-a", data["alpha-a"], n_test=4, judge_heldout=3, k_demos=5, judge_pool=20,
                             seed=seed)
        held = {r["body"] for r in split.test + split.judge_heldout}
        train = {r["body"] for r in split.demos + split.judge_train}
        assert not held & train
        assert len(split.test) == 4 and len(split.judge_heldout) == 3 and len(split.demos) == 5
        assert held | train == {r["body"] for r in data["alpha-a"]}  # nothing dropped except the duplicate
        profile = sender_profile(split)
        assert {d.output for d in profile.demonstrations} <= train
        assert {e.reference for e in profile.eval_prompts} == {r["body"] for r in split.test}
    again = split_sender("alpha-a", data["alpha-a"], 4, 3, 5, 20, seed=4)
    assert [r["body"] for r in again.test] == [r["body"] for r in split.test]  # seeded
    with pytest.raises(DataError, match="needs at least"):
        split_sender("alpha-a", data["alpha-a"], n_test=10, judge_heldout=5, k_demos=7, judge_pool=20, seed=0)


def test_prompts_are_derived_and_only_the_unseen_part_is_scored(tmp_path):
    data = load_enron(write_enron_fixture(tmp_path / "data"))
    split = split_sender("beta-b", data["beta-b"], 4, 3, 5, 20, seed=0)
    profile = sender_profile(split)
    row = split.test[0]
    prompt = profile.eval_prompts[0].prompt
    first = row["body"].split("\n\n")[1].split(". ")[0] + "."
    topic = row["subject"].removeprefix("Re: ")
    expected = (f'Write a reply email about "{topic}"' if row["subject"] else "Write an email") + \
        f" that starts with the following: {first}"
    assert prompt == expected
    assert profile.constraints.sign_off == "Bea"  # inferred from the demonstrations alone
    # An output that only copies the given sentence scores nothing beyond it; the real rest scores 1.
    rouge = UnseenPartEvaluator(RougeLEvaluator())
    copy_only, real = rouge.score([prompt, prompt], [first, row["body"]], [row["body"], row["body"]])
    assert copy_only == 0.0 and real == pytest.approx(1.0)


def test_missing_data_is_one_line(tmp_path):
    with pytest.raises(DataError, match=r"enron_sent\.jsonl: file not found"):
        load_enron(tmp_path)
    result = CliRunner().invoke(app, ["eval", "enron", "--data-dir", str(tmp_path), "--methods", "base"])
    assert result.exit_code == 2 and "file not found" in result.output


def test_tiny_run_scores_every_output_with_win_rates(tmp_path, chat_tokenizer):
    model_dir = tmp_path / "tiny-model"
    make_tiny_llama(chat_tokenizer).save_pretrained(model_dir)
    chat_tokenizer.save_pretrained(model_dir)
    cfg = EnronBenchConfig(
        senders=["alpha-a", "beta-b"], methods=["base", "prompt"], data_dir=str(write_enron_fixture(tmp_path / "d")),
        out=str(tmp_path / "runs"), model=ModelConfig(model=str(model_dir), device="cpu", dtype="fp32"),
        sampling=SamplingConfig(max_new_tokens=6, seed=0), n_test=3, judge_heldout=3, k_demos=4, n_boot=200,
    )
    lines: list[str] = []
    run, summary = run_enron_benchmark(cfg, progress=False, echo=lines.append)
    assert len(run.outputs) == 2 * 2 * 3
    assert all(set(r["scores"]) == {"authorship", "ref_cosine", "rouge_l", "rules"} for r in run.outputs)
    assert summary["senders"] == {0: "alpha-a", 1: "beta-b"} and summary["judge"]["n_authors"] == 2
    assert set(summary["vs"]["authorship"]["prompt"]) == {"base", "prompt"}  # vs both baselines, with CIs
    assert {"ci_low", "ci_high"} <= set(summary["vs"]["rules"]["prompt"]["base"])
    assert any("held-out ROC-AUC" in line for line in lines)
    assert (run.path / "table.md").read_text().startswith("# Author benchmark: enron (2 authors)")
