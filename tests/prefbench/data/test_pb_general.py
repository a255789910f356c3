"""General preference pairs (HH helpful + the harmless half the tax sets do not use), kept disjoint from
the tax sets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from personalign.prefbench.data.general import disjoint_from, load_general, load_hh_helpful
from personalign.prefbench.data.tax import TaxPair, hh_harmless_half, load_tax_sets

SHARED = Path(__file__).resolve().parents[3].parent / "shared" / "datasets"


def test_helpful_pairs_take_the_higher_score_as_chosen(tmp_path: Path) -> None:
    path = tmp_path / "hh_rlhf" / "dsp_cleaned_helpful.test.json"
    path.parent.mkdir()
    head = "\n\nHuman: how do I boil an egg?\n\nAssistant:"
    path.write_text(json.dumps([{"text": [head + " Put it in water.", head + " Eggs are oval."], "score": [1, 3]},
                                {"text": [head + " same", head + " same2"], "score": [2, 2]}]))
    pairs = load_hh_helpful(tmp_path)
    assert [(p.chosen, p.rejected) for p in pairs] == [("Eggs are oval.", "Put it in water.")]


def test_disjoint_from_drops_shared_prompts_and_responses() -> None:
    tax = [TaxPair("q1", "a", "b", "safety", "x")]
    general = [TaxPair("q1", "c", "d", "general", "g"), TaxPair("q2", "a", "e", "general", "g"),
               TaxPair("q3", "f", "g", "general", "g")]
    kept, dropped = disjoint_from(general, tax)
    assert [p.prompt for p in kept] == ["q3"] and dropped == 2


@pytest.mark.skipif(not (SHARED / "hh_rlhf").is_dir(), reason="shared data sets not present")
def test_real_general_pairs_never_meet_the_tax_sets() -> None:
    tax_half = {p[0] for p in hh_harmless_half(SHARED, "tax")}
    general_half = {p[0] for p in hh_harmless_half(SHARED, "general")}
    assert tax_half and general_half and not tax_half & general_half
    general = load_general(SHARED, max_pairs=400, seed=0)
    assert len(general) == 400 and {p.source for p in general} == {"hh_rlhf/helpful", "hh_rlhf/harmless-base"}
    tax = load_tax_sets(SHARED, 200, 0)
    kept, _ = disjoint_from(general, tax)
    tax_texts = {p.prompt for p in tax} | {p.chosen for p in tax} | {p.rejected for p in tax}
    assert not {t for p in kept for t in (p.prompt, p.chosen, p.rejected)} & tax_texts
