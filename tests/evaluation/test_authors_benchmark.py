"""The author benchmark end to end on a tiny data fixture and a tiny model folder, plus its aggregation math."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from conftest import make_tiny_llama
from personalign.config import ModelConfig, SamplingConfig
from personalign.errors import PersonalignError
from personalign.evaluation.authors_benchmark import (
    AuthorsBenchConfig,
    markdown_table,
    run_authors_benchmark,
    summarize,
)

VOCAB = {
    0: ["harbor", "anchor", "tide", "gale", "mast", "rigging", "starboard", "keel", "voyage", "compass"],
    1: ["flour", "oven", "dough", "yeast", "crust", "butter", "whisk", "sugar", "knead", "loaf"],
    2: ["circuit", "voltage", "resistor", "solder", "diode", "capacitor", "current", "ground", "wire", "chip"],
}


def _text(author: int, rng: random.Random) -> str:
    return " ".join(rng.choice(VOCAB[author]) for _ in range(30)).capitalize() + "."


def write_cmcc_fixture(root: Path) -> Path:
    rng = random.Random(0)
    rows = [
        {"dataset": "cmcc", "split": split, "author_id": a, "idx": i, "prompt": f"Write about {split} topic {i}.",
         "output": _text(a, rng)}
        for a in VOCAB for split, n in (("train", 4), ("val", 2), ("test", 2)) for i in range(n)
    ]
    (root / "ditto").mkdir(parents=True)
    (root / "ditto" / "ditto_processed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture
def tiny_model_dir(tmp_path, chat_tokenizer) -> Path:
    folder = tmp_path / "tiny-model"
    make_tiny_llama(chat_tokenizer).save_pretrained(folder)
    chat_tokenizer.save_pretrained(folder)
    return folder


def test_benchmark_runs_scores_every_output_and_resumes(tmp_path, tiny_model_dir):
    data = write_cmcc_fixture(tmp_path / "data")
    cfg = AuthorsBenchConfig(
        dataset="cmcc", authors=[0, 1], methods=["base", "prompt", "prompt-rag"], data_dir=str(data),
        out=str(tmp_path / "runs"), model=ModelConfig(model=str(tiny_model_dir), device="cpu", dtype="fp32"),
        sampling=SamplingConfig(max_new_tokens=6, seed=0), n_boot=200,
    )
    lines: list[str] = []
    run, summary = run_authors_benchmark(cfg, progress=False, echo=lines.append)
    rows = run.outputs
    assert len(rows) == 2 * 3 * 2  # authors × methods × test prompts
    assert {r["method"] for r in rows} == {"base", "prompt", "prompt-rag"}
    assert all(set(r["scores"]) == {"authorship", "ref_cosine", "rouge_l"} for r in rows)
    assert all(0.0 <= r["scores"]["authorship"] <= 1.0 and r["reference"] for r in rows)
    assert sum("held-out ROC-AUC" in line for line in lines) == 2  # validity printed for every author
    validity = [m for m in run.metrics if m["kind"] == "judge_validity"]
    assert [v["author"] for v in validity] == [0, 1] and all(v["auc"] > 0.9 for v in validity)
    vs = summary["vs"]["authorship"]
    assert vs["base"]["base"]["rate"] == 0.5 and set(vs["prompt-rag"]) == {"base", "prompt"}
    for name in ("config.yaml", "env.json", "summary.json", "table.md", "metrics.jsonl"):
        assert (run.path / name).is_file()
    assert "win vs base" in (run.path / "table.md").read_text()
    # Resume: the same run dir again does no generation (no new outputs), and the summary is the same.
    resumed = cfg.model_copy(update={"out": str(run.path), "resume": True})
    again, summary2 = run_authors_benchmark(resumed, progress=False)
    assert len(again.outputs) == len(rows)
    assert summary2["vs"] == summary["vs"]


def test_unknown_method_and_author_fail_before_any_work(tmp_path):
    data = write_cmcc_fixture(tmp_path / "data")
    with pytest.raises(PersonalignError, match="unknown method"):
        AuthorsBenchConfig(methods=["nope"], data_dir=str(data)).resolved_methods()
    with pytest.raises(PersonalignError, match="not in cmcc"):
        AuthorsBenchConfig(authors=[7], data_dir=str(data)).resolved_authors()
    quick = AuthorsBenchConfig(quick=True, data_dir=str(data))
    assert quick.resolved_authors() == [0, 1, 2] and quick.resolved_sampling().max_new_tokens == 128


def _rows(author: int, prompt: str, scores: dict[str, float]) -> list[dict]:
    return [{"author": author, "prompt": prompt, "method": m, "sample": 0, "output": "x y z",
             "scores": {"authorship": s}} for m, s in scores.items()]


def test_summary_win_rates_and_per_author_breakdown_by_hand():
    rows = [
        *_rows(0, "p1", {"base": 0.1, "prompt": 0.5, "ditto": 0.9}),
        *_rows(0, "p2", {"base": 0.2, "prompt": 0.2, "ditto": 0.1}),
        *_rows(1, "p1", {"base": 0.3, "prompt": 0.1, "ditto": 0.6}),  # same prompt text, other author
    ]
    metrics = [{"kind": "judge_validity", "author": 0, "auc": 0.9}, {"kind": "judge_validity", "author": 1, "auc": 0.6}]
    summary = summarize(rows, metrics, ["base", "prompt", "ditto"], n_boot=200)
    vs = summary["vs"]["authorship"]
    # ditto vs base: win (0.9>0.1), loss (0.1<0.2), win (0.6>0.3) → 2/3
    assert vs["ditto"]["base"]["rate"] == pytest.approx(2 / 3)
    # prompt vs base: win, tie, loss → 0.5; ditto vs prompt: win, loss, win → 2/3
    assert vs["prompt"]["base"]["rate"] == 0.5 and vs["ditto"]["prompt"]["rate"] == pytest.approx(2 / 3)
    assert summary["per_author"]["0"]["vs_base"]["ditto"] == 0.5
    assert summary["per_author"]["1"]["vs_base"]["ditto"] == 1.0
    assert summary["per_author"]["0"]["mean"]["ditto"] == pytest.approx(0.5)
    assert summary["judge"] == {"mean_auc": 0.75, "min_auc": 0.6, "n_authors": 2, "n_below_0.65": 1}
    assert summary["matrix"]["authorship"]["ditto"]["ditto"] == 0.5
    table = markdown_table(summary | {"dataset": "cmcc", "authors": [0, 1]})
    assert "| ditto | 0.533 | 67%" in table and "1 below 0.65" in table


class ScriptedJudgeBackend:
    """Parsing test only: a stand-in for a judge model that answers in Prometheus's format."""

    def __init__(self, replies: list[str]):
        self.replies = replies

    def generate(self, conversations, sampling, progress=False):
        return [[self.replies[i % len(self.replies)]] for i in range(len(conversations))]


def test_llm_judge_plugs_in_as_an_evaluator_and_unparseable_is_none():
    from personalign.evaluation.evaluators import JudgeEvaluator
    from personalign.judges.llm import LLMJudge

    judge = LLMJudge(ScriptedJudgeBackend(["Feedback: fine. [RESULT] 4", "I cannot decide."]))  # type: ignore[arg-type]
    evaluator = JudgeEvaluator(judge, name="llm_judge")
    assert evaluator.score(["p1", "p2"], ["o1", "o2"], [None, None]) == [4.0, None]
