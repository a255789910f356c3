"""io: JSONL from plain and gzip files, with errors that name the file and the line."""

from __future__ import annotations

import gzip

import pytest

from personalign.errors import DataError
from personalign.io import enumerate_jsonl, read_text


def test_gzip_jsonl_reads_like_plain(tmp_path) -> None:
    text = '{"a": 1}\n\n{"a": 2}\n'
    plain, packed = tmp_path / "rows.jsonl", tmp_path / "rows.jsonl.gz"
    plain.write_text(text, encoding="utf-8")
    packed.write_bytes(gzip.compress(text.encode("utf-8")))
    assert list(enumerate_jsonl(packed)) == list(enumerate_jsonl(plain)) == [(1, {"a": 1}), (3, {"a": 2})]


def test_bad_files_name_the_problem(tmp_path) -> None:
    broken = tmp_path / "broken.jsonl.gz"
    broken.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=r"broken\.jsonl\.gz: not a readable gzip file"):
        read_text(broken)
    bad_line = tmp_path / "bad.jsonl"
    bad_line.write_text('{"a": 1}\n{oops\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl:2: invalid JSON"):
        list(enumerate_jsonl(bad_line))
    with pytest.raises(DataError, match="file not found"):
        read_text(tmp_path / "missing.jsonl")


def test_atomic_dir_replaces_on_success_and_keeps_the_old_folder_on_error(tmp_path) -> None:
    from personalign.io import atomic_dir

    target = tmp_path / "weights"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("first", encoding="utf-8")
    assert (target / "a.txt").read_text(encoding="utf-8") == "first"
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("half-written", encoding="utf-8")
        raise RuntimeError("interrupted")
    assert (target / "a.txt").read_text(encoding="utf-8") == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["weights"]  # no temp folder left behind


def test_read_json_names_file_line_and_expectation(tmp_path) -> None:
    from personalign.io import read_json

    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text('[{"a": 1}]', encoding="utf-8")
    bad.write_text('[\n{"a": 1,,}]', encoding="utf-8")
    assert read_json(good) == [{"a": 1}]
    with pytest.raises(DataError, match=r"bad\.json: invalid JSON \(.* at line 2\); expected a list of rows"):
        read_json(bad, expected="a list of rows")


def test_forbidden_folder_refuses_every_atomic_write(tmp_path) -> None:
    from personalign.io import atomic_dir, atomic_write_json, forbid_writes

    run = tmp_path / "run"
    forbid_writes(run)
    try:
        with pytest.raises(RuntimeError, match="only the main process"):
            atomic_write_json(run / "metrics.jsonl", {})
        with pytest.raises(RuntimeError, match="only the main process"), atomic_dir(run / "checkpoints" / "s1"):
            pass
        atomic_write_json(tmp_path / "elsewhere.json", {})  # outside the run dir: allowed
    finally:
        forbid_writes(None)
    atomic_write_json(run / "metrics.jsonl", {})
    assert not (run / "checkpoints").exists()
