"""Judge validation metrics by hand, the built-in labeled sets, and labeled files."""

from __future__ import annotations

import json

import pytest

from personalign.errors import DataError
from personalign.judges.base import RulesJudge, Verdict
from personalign.judges.labeled_sets import load_labeled
from personalign.judges.validate import agreement_metrics, bootstrap_ci, validate_judge


def _v(label, orders=None):
    return Verdict(label, orders if orders is not None else [label])


def test_accuracy_and_kappa_by_hand():
    gold = ["A", "A", "B", "B"]
    metrics = agreement_metrics(gold, [_v("A"), _v("B"), _v("B"), _v("B")])
    # p_o = 3/4; p_e = 0.5·0.25 + 0.5·0.75 = 0.5; kappa = (0.75 − 0.5) / 0.5
    assert metrics["accuracy"] == 0.75
    assert metrics["kappa"] == pytest.approx(0.5)
    assert metrics["tie_rate"] == 0.0 and metrics["unparseable_rate"] == 0.0
    assert metrics["position_bias_rate"] != metrics["position_bias_rate"]  # NaN: an order-free judge


def test_position_bias_rate_counts_only_pairs_with_both_orders_parsed():
    verdicts = [_v("A", ["A", "A"]), _v("tie", ["A", "B"]), _v(None, [None, "B"]), _v("B", ["B", "B"])]
    assert agreement_metrics(["A", "A", "B", "B"], verdicts)["position_bias_rate"] == pytest.approx(1 / 3)


def test_bootstrap_interval_brackets_the_estimate():
    gold = ["A", "B"] * 20
    verdicts = [_v("A")] * 40  # right on half of them
    ci = bootstrap_ci(gold, verdicts, n_boot=300, seed=1)
    low, high = ci["accuracy"]
    assert low < 0.5 < high and high - low < 0.5
    assert bootstrap_ci(gold, verdicts, n_boot=300, seed=1) == ci  # seeded


def test_builtin_sets_have_the_documented_sizes_and_shuffled_positions(shared_data):
    sizes = {"prometheus-hhh": 221, "autoj": 1392, "llmbar-natural": 100, "llmbar": 419, "mtbench-human": 200}
    for name, size in sizes.items():
        pairs = load_labeled(name, shared_data)
        assert len(pairs) == size
        share_a = sum(p.label == "A" for p in pairs) / size
        assert 0.3 < share_a < 0.6, name  # a judge that always says "A" must not look good
    hhh = load_labeled("prometheus-hhh", shared_data)
    assert all(p.rubric and p.rubric.startswith("[") for p in hhh)
    assert "###" not in hhh[0].a
    assert sum(p.label == "tie" for p in load_labeled("autoj", shared_data)) == 373
    assert len(load_labeled("autoj", shared_data, limit=10, seed=3)) == 10


def test_labeled_file_forms_and_errors(tmp_path):
    good = tmp_path / "pairs.jsonl"
    good.write_text("\n".join(json.dumps(r) for r in [
        {"prompt": "p", "chosen": "yes", "rejected": "no", "margin": 1.5},
        {"prompt": "q", "a": "x", "b": "y", "label": "tie"},
    ]))
    pairs = load_labeled(str(good))
    assert pairs[0].chosen_rejected() == ("yes", "no") and pairs[0].margin == 1.5
    assert pairs[1].label == "tie" and pairs[1].chosen_rejected() is None
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "a": "x", "b": "y", "label": "first"}))
    with pytest.raises(DataError, match="item 1: field 'label'"):
        load_labeled(str(bad))
    with pytest.raises(DataError, match="not a file and not a built-in set"):
        load_labeled("no-such-set")


def test_validate_rules_judge_on_crafted_pairs(tmp_path):
    rows = [{"prompt": "p", "chosen": f"Thanks for the update on item {i}. I will reply by Friday.",
             "rejected": f"Here is your email: Dear [Your Name], item {i}"} for i in range(12)]
    path = tmp_path / "crafted.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    summary, per_pair = validate_judge(RulesJudge(), load_labeled(str(path)), n_boot=200)
    assert summary["accuracy"] == 1.0 and summary["kappa"] == pytest.approx(1.0)
    assert summary["ci95"]["accuracy"] == (1.0, 1.0)
    assert len(per_pair) == 12 and per_pair[0]["pred"] == per_pair[0]["gold"]
