"""Feedback DB: schema, WAL and foreign keys, forward migrations, refusal of foreign/newer files, answer rules."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from personalign.feedback.db import (
    APPLICATION_ID,
    MIGRATIONS,
    SCHEMA_VERSION,
    Candidate,
    FeedbackDB,
    FeedbackError,
    StaleFormError,
    TooLargeError,
    _statements,
    digest,
)
from personalign.profiles.loading import parse_profile

PROFILE = parse_profile({"name": "Zed Toy", "task": "write notes",
                         "demonstrations": [{"prompt": "Greet Al.", "output": "Hi Al.\n\nCheers,\nZed"}],
                         "eval_prompts": ["Greet Bo."]})
X = Candidate("Hi Cy. Cheers, Zed", "prompt", None, 1)
Y = Candidate("Hello Cy. Best, Bob", "sft", "runs/sft-1", 2)


def new_round(db: FeedbackDB, order: str = "yx", prompt: str = "Greet Cy."):
    return db.add_round(prompt, "typed", X, Y, order, db.profile_version(PROFILE))


def test_new_db_is_ours_in_wal_with_foreign_keys(tmp_path):
    db = FeedbackDB(tmp_path / "f.sqlite")
    assert db.version == SCHEMA_VERSION
    with db.reading() as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert [r[0] for r in conn.execute("SELECT version FROM schema_migrations")] == [m[0] for m in MIGRATIONS]
        with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
            conn.execute("INSERT INTO choices (round_id, created_at, profile_version, shown_choice, winner) "
                         "VALUES ('nope', 't', 1, 'A', 'x')")
    assert FeedbackDB(tmp_path / "f.sqlite").version == SCHEMA_VERSION  # reopening is a no-op


def test_choice_maps_shown_position_to_stored_candidate(tmp_path):
    db = FeedbackDB(tmp_path / "f.sqlite")
    rnd = new_round(db, "yx")  # y shown as A
    assert rnd.shown["A"] == Y and rnd.slot("A") == "y"
    db.record_choice(rnd.id, digest(rnd.prompt), "A", rnd.profile_version, reason=" shorter\nand warmer ",
                     elapsed_ms=1500)
    (row,) = db.answers()
    assert (row["winner"], row["shown_choice"], row["shown_order"]) == ("y", "A", "yx")
    assert row["reason"] == "shorter and warmer" and row["elapsed_ms"] == 1500
    assert (row["y_method"], row["y_run"], row["y_seed"], row["x_text"]) == ("sft", "runs/sft-1", 2, X.text)


def test_answers_are_never_rewritten_and_retries_store_once(tmp_path):
    db = FeedbackDB(tmp_path / "f.sqlite")
    rnd = new_round(db)
    first = db.record_choice(rnd.id, digest(rnd.prompt), "B", rnd.profile_version)
    assert db.record_choice(rnd.id, digest(rnd.prompt), "B", rnd.profile_version) == first  # retry
    with pytest.raises(StaleFormError, match="already answered"):
        db.record_choice(rnd.id, digest(rnd.prompt), "A", rnd.profile_version)
    assert [r["shown_choice"] for r in db.answers()] == ["B"]


def test_stale_forms_and_bad_input_store_nothing(tmp_path):
    db = FeedbackDB(tmp_path / "f.sqlite")
    rnd = new_round(db)
    with pytest.raises(StaleFormError, match="prompt changed"):
        db.record_choice(rnd.id, digest("another prompt"), "A", rnd.profile_version)
    with pytest.raises(StaleFormError, match="not in the database"):
        db.record_choice("0" * 32, digest(rnd.prompt), "A", rnd.profile_version)
    with pytest.raises(FeedbackError, match="field 'choice'"):
        db.record_choice(rnd.id, digest(rnd.prompt), "C", rnd.profile_version)
    with pytest.raises(FeedbackError, match="field 'edited' is empty"):
        db.record_edit(rnd.id, digest(rnd.prompt), "A", "  \n ", rnd.profile_version)
    with pytest.raises(TooLargeError, match="above the limit"):
        db.record_edit(rnd.id, digest(rnd.prompt), "A", "x" * 20_001, rnd.profile_version)
    with pytest.raises(FeedbackError, match="unchanged"):
        db.record_edit(rnd.id, digest(rnd.prompt), "A", rnd.shown["A"].text + "\n", rnd.profile_version)
    assert db.counts() == {"choices": 0, "ties": 0, "edits": 0, "rounds": 1}


def test_edit_keeps_original_and_source(tmp_path):
    db = FeedbackDB(tmp_path / "f.sqlite")
    rnd = new_round(db, "xy")
    edit = db.record_edit(rnd.id, digest(rnd.prompt), "B", "Hi Cy, thanks!\n\nCheers,\nZed", rnd.profile_version)
    assert (edit["candidate"], edit["original"], edit["original_run"]) == ("y", Y.text, "runs/sft-1")
    db.record_edit(rnd.id, digest(rnd.prompt), "B", "Hi Cy, thanks!\n\nCheers,\nZed", rnd.profile_version)
    assert len(db.edits()) == 1


def test_profile_versions_are_content_addressed(tmp_path):
    db = FeedbackDB(tmp_path / "f.sqlite")
    first = db.profile_version(PROFILE)
    assert db.profile_version(PROFILE) == first
    changed = PROFILE.model_copy(update={"rules": ["Be brief."]})
    assert db.profile_version(changed) != first


def test_forward_migration_keeps_rows(tmp_path):
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path, isolation_level=None)  # a v1 database as the first release wrote it
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                 "applied_at TEXT NOT NULL)")
    for statement in _statements(MIGRATIONS[0][2]):
        conn.execute(statement)
    conn.execute("INSERT INTO schema_migrations VALUES (1, 'initial tables', 't')")
    conn.execute("INSERT INTO profile_versions VALUES (1, 'd', 'Zed', '{}', 't')")
    conn.execute("INSERT INTO rounds VALUES ('r1', 't', 1, 'Greet Cy.', 'typed', 'a', 'm', NULL, 0, 'b', 'n', NULL, 1,"
                 " 'xy')")
    conn.execute("INSERT INTO choices (round_id, created_at, profile_version, shown_choice, winner, reason) "
                 "VALUES ('r1', 't', 1, 'B', 'y', 'why')")
    conn.close()
    db = FeedbackDB(path)
    assert db.version == SCHEMA_VERSION == 2
    (row,) = db.answers()
    assert (row["prompt"], row["winner"], row["reason"], row["elapsed_ms"]) == ("Greet Cy.", "y", "why", None)


def test_foreign_and_newer_files_are_refused_untouched(tmp_path):
    text = tmp_path / "notes.sqlite"
    text.write_text("hello")
    with pytest.raises(FeedbackError, match="not an SQLite database"):
        FeedbackDB(text)
    assert text.read_text() == "hello"

    other = tmp_path / "other.sqlite"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE people (name TEXT)")
    conn.execute("INSERT INTO people VALUES ('Al')")
    conn.commit()
    conn.close()
    before = other.read_bytes()
    with pytest.raises(FeedbackError, match="not a personalign feedback database"):
        FeedbackDB(other)
    assert other.read_bytes() == before

    newer = tmp_path / "newer.sqlite"
    FeedbackDB(newer)
    conn = sqlite3.connect(newer)
    conn.execute("INSERT INTO schema_migrations VALUES (99, 'from the future', 't')")
    conn.commit()
    conn.close()
    with pytest.raises(FeedbackError, match=r"newer personalign \(schema v99"):
        FeedbackDB(newer)
    conn = sqlite3.connect(newer)
    assert conn.execute("SELECT max(version) FROM schema_migrations").fetchone()[0] == 99
    conn.close()


def test_two_writers_at_once_lose_nothing(tmp_path):
    db = FeedbackDB(tmp_path / "f.sqlite")
    rounds = [new_round(db, prompt=f"Greet person {i}.") for i in range(40)]
    errors: list[BaseException] = []

    def answer(part: list) -> None:
        other = FeedbackDB(tmp_path / "f.sqlite")  # a second session: its own object and connections
        try:
            for rnd in part:
                other.record_choice(rnd.id, digest(rnd.prompt), "A", rnd.profile_version)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=answer, args=(rounds[i::2],)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(r["round_id"] for r in db.answers()) == sorted(r.id for r in rounds)
