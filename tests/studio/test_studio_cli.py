"""`personalign studio`: bad input stops with one line (exit 2) before any model loads."""

from __future__ import annotations

import sqlite3

import pytest
from typer.testing import CliRunner


@pytest.mark.parametrize("args, message", [
    (["--host", "0.0.0.0"], "pass --token"),
    (["--methods", "sft"], "needs training first"),
    (["--methods", "nope"], "unknown method or run dir 'nope'"),
    (["--runs", "RUNDIR"], "no method.json"),
    (["--db", "TEXTFILE"], "not an SQLite database"),
    (["--db", "FOREIGN"], "not a personalign feedback database"),
    (["--prompts", "MISSING"], "file not found"),
    (["--port", "0"], "port"),
])
def test_bad_input_is_one_line(args, message, tmp_path, example_profile_path):
    from personalign.cli.main import app

    (tmp_path / "rundir").mkdir()
    (tmp_path / "notes.txt").write_text("hello")
    conn = sqlite3.connect(tmp_path / "other.sqlite")
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    paths = {"RUNDIR": tmp_path / "rundir", "TEXTFILE": tmp_path / "notes.txt", "FOREIGN": tmp_path / "other.sqlite",
             "MISSING": tmp_path / "missing.txt"}
    args = [str(paths.get(a, a)) for a in args]
    db = [] if "--db" in args else ["--db", str(tmp_path / "feedback.sqlite")]
    result = CliRunner().invoke(app, ["studio", "--profile", str(example_profile_path), "--model", "/no-model",
                                      *db, *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output
