"""DSP loader: each domain user prefers its own response; shared comparisons carry the same pair_id."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from personalign.errors import DataError, PersonalignError
from personalign.prefbench.characterize import characterize
from personalign.prefbench.data.dsp import DSP_USERS, load_dsp


def write_dsp(path: Path, n: int = 5, empty_normal: bool = False) -> Path:
    recs = [{"query": f"question {i}",
             "responses": {d: f"{d} answer {i}" for d in (*DSP_USERS, "normal")}} for i in range(n)]
    if empty_normal:
        recs[0]["responses"]["normal"] = " "
    path.write_text(json.dumps(recs), encoding="utf-8")
    return path


def test_pairs_users_and_shared_comparisons(tmp_path: Path) -> None:
    data = load_dsp(write_dsp(tmp_path / "dsp.json", n=5, empty_normal=True))
    assert data.users == list(DSP_USERS)
    # 4 users × 4 rivals × 5 queries, minus the 4 comparisons against the empty `normal` response.
    assert len(data) == 4 * 4 * 5 - 4
    academy = [p for p in data.pairs if p.user_id == "academy" and p.prompt == "question 1"]
    assert {p.rejected for p in academy} == {"business answer 1", "entertainment answer 1",
                                              "literature answer 1", "normal answer 1"}
    assert all(p.chosen == "academy answer 1" for p in academy)
    # academy-vs-business is labeled by both users, with opposite labels.
    report = characterize(data)
    assert report["n_shared_comparisons"] == 6 * 5
    assert report["disagreement"] == 1.0
    # All of a query's pairs share a split (no prompt leaks across splits), deterministically.
    for q in {p.prompt for p in data.pairs}:
        assert len({p.split for p in data.pairs if p.prompt == q}) == 1
    assert [p.split for p in load_dsp(tmp_path / "dsp.json").pairs] == [p.split for p in
                                                                         load_dsp(tmp_path / "dsp.json").pairs]


def test_bad_dsp_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"query": "q", "responses": {"academy": "x"}}]), encoding="utf-8")
    with pytest.raises(DataError, match="record 0 lacks responses for business"):
        load_dsp(bad)
    with pytest.raises(PersonalignError, match=r"data sets not found.*--data-dir"):
        load_dsp(tmp_path / "nowhere")


def test_real_dsp_file_if_present() -> None:
    root = Path(__file__).resolve().parents[4] / "shared" / "datasets"
    if not (root / "dsp").is_dir():
        pytest.skip("shared data sets not present")
    data = load_dsp(root)
    raw = json.loads((root / "dsp" / "domain_specific_preference.test.json").read_text(encoding="utf-8"))
    assert len(raw) == 661 and data.users == list(DSP_USERS)
    # One pair per (query, user, other response), except against an empty or identical response.
    expected = sum(1 for r in raw for d in DSP_USERS for o in r["responses"]
                   if o != d and r["responses"][o].strip() and r["responses"][o] != r["responses"][d])
    assert len(data) == expected > 10_000
