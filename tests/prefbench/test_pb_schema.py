"""The common schema: clear one-line errors for bad records, unknown users and empty splits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from personalign.errors import DataError
from personalign.prefbench.data import load_prefdata
from personalign.prefbench.schema import PrefData, PrefPair, comparison_id, from_records, load_schema_file

ROW = {"user_id": "u1", "prompt": "p", "chosen": "a", "rejected": "b", "split": "train"}


@pytest.mark.parametrize(("row", "match"), [
    ({k: v for k, v in ROW.items() if k != "chosen"}, "record 0 lacks field.*chosen"),
    ({**ROW, "split": "dev"}, "split 'dev'; use one of train, test"),
    ({**ROW, "prompt": 3}, "field 'prompt' must be text"),
    ({**ROW, "rejected": "  "}, "empty 'chosen' or 'rejected'"),
    ("not a dict", "record 0 is a str"),
])
def test_bad_records(row, match) -> None:
    with pytest.raises(DataError, match=match):
        from_records("x", [row])


def test_comparison_id_ignores_order_and_pair_id_wins() -> None:
    assert comparison_id("p", "a", "b") == comparison_id("p", "b", "a") != comparison_id("q", "a", "b")
    assert PrefPair("u", "p", "a", "b", "train", "given").comparison == "given"


def test_unknown_users_and_empty_splits() -> None:
    data = from_records("x", [ROW, {**ROW, "user_id": "u2", "split": "test"}, {**ROW, "split": "test"}])
    with pytest.raises(DataError, match=r"unknown user id\(s\) \['u9'\]; known users: u1, u2"):
        data.for_users(["u9"])
    with pytest.raises(DataError, match="user 'u2' has no pairs in split 'train'"):
        data.check_splits()
    with pytest.raises(DataError, match="split 'test' is empty"):
        PrefData("y", [PrefPair("u", "p", "a", "b", "train")]).check_splits()
    with pytest.raises(DataError, match="no preference pairs"):
        PrefData("z", []).check_splits()


def test_schema_files_round_trip(tmp_path: Path) -> None:
    rows = [ROW, {**ROW, "split": "test", "pair_id": "c1"}]
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    data = load_prefdata(str(path))
    assert data.name == "mine" and len(data) == 2 and data.pairs[1].pair_id == "c1"
    (tmp_path / "mine.json").write_text(json.dumps(rows), encoding="utf-8")
    assert len(load_schema_file(tmp_path / "mine.json")) == 2
    with pytest.raises(DataError, match="unknown data set 'nope'"):
        load_prefdata("nope")
