"""The feedback database: a person's blind choices and edits in SQLite, the data the training methods read.

SQLite in WAL mode with foreign keys on, one `BEGIN IMMEDIATE` transaction per answer, `synchronous=FULL`
(an answer that got a success response survives a crash of the process or the machine), and a schema
version with forward-only migrations recorded in `schema_migrations`. `PRAGMA application_id` marks the file
as ours, so a foreign SQLite file or one written by a newer personalign is refused before anything is written.

Tables: `profile_versions` (each distinct profile the person answered under), `rounds` (a prompt and the two
candidates x, y with their sources and the order they were shown in), `choices` (one answer per round) and
`edits` (a candidate rewritten into what the person would send). The `answers` view joins a choice with its
round, so one row holds prompt, both candidates, sources, shown order, answer, time and profile version.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from personalign.errors import PersonalignError
from personalign.profiles.schema import Profile

APPLICATION_ID = 0x50414C46  # "PALF": personalign feedback
SQLITE_MAGIC = b"SQLite format 3\x00"
MAX_TEXT_CHARS = 20_000  # a long email is ~3k characters; anything far above is a paste accident
MAX_REASON_CHARS = 500  # "a one-line reason"
CHOICES = ("A", "B", "tie")

_V1 = """
CREATE TABLE profile_versions (
  id INTEGER PRIMARY KEY,
  digest TEXT NOT NULL UNIQUE,
  name TEXT NOT NULL,
  profile TEXT NOT NULL,
  created_at TEXT NOT NULL
);
CREATE TABLE rounds (
  id TEXT PRIMARY KEY,
  created_at TEXT NOT NULL,
  profile_version INTEGER NOT NULL REFERENCES profile_versions(id),
  prompt TEXT NOT NULL CHECK (length(prompt) > 0),
  prompt_source TEXT NOT NULL CHECK (prompt_source IN ('eval', 'typed', 'file')),
  x_text TEXT NOT NULL, x_method TEXT NOT NULL, x_run TEXT, x_seed INTEGER NOT NULL,
  y_text TEXT NOT NULL, y_method TEXT NOT NULL, y_run TEXT, y_seed INTEGER NOT NULL,
  shown_order TEXT NOT NULL CHECK (shown_order IN ('xy', 'yx'))
);
CREATE TABLE choices (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  round_id TEXT NOT NULL UNIQUE REFERENCES rounds(id),
  created_at TEXT NOT NULL,
  profile_version INTEGER NOT NULL REFERENCES profile_versions(id),
  shown_choice TEXT NOT NULL CHECK (shown_choice IN ('A', 'B', 'tie')),
  winner TEXT NOT NULL CHECK (winner IN ('x', 'y', 'tie')),
  reason TEXT NOT NULL DEFAULT ''
);
CREATE TABLE edits (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  round_id TEXT NOT NULL REFERENCES rounds(id),
  created_at TEXT NOT NULL,
  profile_version INTEGER NOT NULL REFERENCES profile_versions(id),
  candidate TEXT NOT NULL CHECK (candidate IN ('x', 'y')),
  shown_position TEXT NOT NULL CHECK (shown_position IN ('A', 'B')),
  prompt TEXT NOT NULL,
  original TEXT NOT NULL,
  original_method TEXT NOT NULL,
  original_run TEXT,
  original_seed INTEGER NOT NULL,
  edited TEXT NOT NULL CHECK (length(trim(edited)) > 0 AND edited != original),
  UNIQUE (round_id, candidate, edited)
);
"""

# v2: how long the person looked before answering (fast clicks are worth less), and one row per answer.
_V2 = """
ALTER TABLE choices ADD COLUMN elapsed_ms INTEGER CHECK (elapsed_ms IS NULL OR elapsed_ms >= 0);
CREATE VIEW answers AS
  SELECT c.id, c.created_at, c.profile_version, r.prompt, r.prompt_source,
         r.x_text, r.x_method, r.x_run, r.x_seed, r.y_text, r.y_method, r.y_run, r.y_seed,
         r.shown_order, c.shown_choice, c.winner, c.reason, c.elapsed_ms, r.id AS round_id
  FROM choices c JOIN rounds r ON r.id = c.round_id;
"""

# (version, name, SQL). Append only: a released migration is never edited, the next one changes it.
MIGRATIONS: list[tuple[int, str, str]] = [(1, "initial tables", _V1), (2, "answer timing and answers view", _V2)]
SCHEMA_VERSION = MIGRATIONS[-1][0]


class FeedbackError(PersonalignError):
    """A feedback answer or database the user can fix; `status` is the HTTP status the studio answers with."""

    status = 400


class StaleFormError(FeedbackError):
    status = 409


class TooLargeError(FeedbackError):
    status = 413


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def digest(text: str) -> str:
    """Short content hash: the stale-form check sends it back with every answer."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def profile_digest(profile: Profile) -> str:
    return digest(json.dumps(profile.model_dump(mode="json"), sort_keys=True, ensure_ascii=False))


@dataclass(frozen=True)
class Candidate:
    """One generated text and where it came from (a method name, the run dir of a trained method, a seed)."""

    text: str
    method: str
    run: str | None
    seed: int


@dataclass(frozen=True)
class Round:
    """A prompt and two candidates; `shown_order` 'xy' means x was shown as A (left, key 1)."""

    id: str
    created_at: str
    profile_version: int
    prompt: str
    prompt_source: str
    x: Candidate
    y: Candidate
    shown_order: str

    @property
    def shown(self) -> dict[str, Candidate]:
        return {"A": self.x, "B": self.y} if self.shown_order == "xy" else {"A": self.y, "B": self.x}

    def slot(self, position: str) -> str:
        """'A'/'B' as shown → 'x'/'y' as stored."""
        return ("x" if position == "A" else "y") if self.shown_order == "xy" else ("y" if position == "A" else "x")


def check_field(text: str, field: str, limit: int = MAX_TEXT_CHARS, allow_empty: bool = False) -> str:
    if not isinstance(text, str):
        raise FeedbackError(f"field '{field}': expected text")
    if not allow_empty and not text.strip():
        raise FeedbackError(f"field '{field}' is empty; write the text you would send")
    if len(text) > limit:
        raise TooLargeError(f"field '{field}' is {len(text):,} characters, above the limit of {limit:,}; shorten it")
    return text


class FeedbackDB:
    """A feedback database file; opening it creates or migrates it. Safe to share between threads and processes
    (each operation opens its own connection; WAL lets readers run beside the one writer)."""

    def __init__(self, path: str | Path, busy_timeout_ms: int = 10_000):
        self.path = Path(path)
        self.busy_timeout_ms = busy_timeout_ms
        self._check_file()
        self.version = self._migrate()

    # ---- opening ---------------------------------------------------------------------------------
    def _check_file(self) -> None:
        if self.path.is_dir():
            raise FeedbackError(f"{self.path}: is a folder; pass a file path such as feedback.sqlite")
        if self.path.exists() and self.path.stat().st_size > 0:
            with self.path.open("rb") as handle:
                head = handle.read(len(SQLITE_MAGIC))
            if head != SQLITE_MAGIC:
                raise FeedbackError(f"{self.path}: not an SQLite database; pass a new path or the feedback.sqlite "
                                    "the studio created")
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def connect(self) -> sqlite3.Connection:
        # isolation_level=None: transactions are explicit (`transaction()`), never opened behind our back.
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout_ms / 1000, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
        conn.execute("PRAGMA synchronous = FULL")
        return conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: all of it is stored or none of it (BEGIN IMMEDIATE takes the write lock first,
        so two writers queue instead of failing halfway)."""
        conn = self.connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            conn.close()

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        conn = self.connect()
        try:
            yield conn
        finally:
            conn.close()

    def _migrate(self) -> int:
        try:
            with self.reading() as conn:
                app_id = conn.execute("PRAGMA application_id").fetchone()[0]
                tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as exc:
            raise FeedbackError(f"{self.path}: unreadable SQLite database ({exc}); pass a new path") from None
        if (app_id != APPLICATION_ID and tables) or (app_id == APPLICATION_ID and "schema_migrations" not in tables):
            raise FeedbackError(f"{self.path}: an SQLite database that is not a personalign feedback database "
                                "(left untouched); pass a new path such as feedback.sqlite")
        if app_id == 0:
            with self.reading() as conn:
                conn.execute("PRAGMA journal_mode = WAL")  # persistent: stored in the file once
        version = 0
        for target, name, sql in MIGRATIONS:
            with self.transaction() as conn:
                # Read inside the write lock: another process may have migrated meanwhile.
                version = self._version(conn)
                if version > SCHEMA_VERSION:
                    raise FeedbackError(
                        f"{self.path}: written by a newer personalign (schema v{version}; this one knows up to "
                        f"v{SCHEMA_VERSION}); upgrade personalign, or pass a new --db path")
                if version >= target:
                    continue
                if version == 0:
                    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                    conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                                 "applied_at TEXT NOT NULL)")
                for statement in _statements(sql):
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)", (target, name, now()))
                version = target
        return version

    @staticmethod
    def _version(conn: sqlite3.Connection) -> int:
        exists = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'schema_migrations'").fetchone()
        if not exists:
            return 0
        return int(conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0])

    # ---- writing ---------------------------------------------------------------------------------
    def profile_version(self, profile: Profile) -> int:
        """The id of this profile's content (inserted the first time it is seen)."""
        key = profile_digest(profile)
        with self.transaction() as conn:
            row = conn.execute("SELECT id FROM profile_versions WHERE digest = ?", (key,)).fetchone()
            if row:
                return int(row[0])
            cur = conn.execute(
                "INSERT INTO profile_versions (digest, name, profile, created_at) VALUES (?, ?, ?, ?)",
                (key, profile.name, json.dumps(profile.model_dump(mode="json"), ensure_ascii=False), now()))
            return int(cur.lastrowid or 0)

    def add_round(self, prompt: str, prompt_source: str, x: Candidate, y: Candidate, shown_order: str,
                  profile_version: int) -> Round:
        check_field(prompt, "prompt")
        rnd = Round(uuid.uuid4().hex, now(), profile_version, prompt, prompt_source, x, y, shown_order)
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO rounds VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (rnd.id, rnd.created_at, profile_version, prompt, prompt_source, x.text, x.method, x.run, x.seed,
                 y.text, y.method, y.run, y.seed, shown_order))
        return rnd

    def get_round(self, round_id: str) -> Round | None:
        with self.reading() as conn:
            row = conn.execute("SELECT * FROM rounds WHERE id = ?", (round_id,)).fetchone()
        return _round(row) if row else None

    def _fresh_round(self, round_id: str, prompt_digest: str) -> Round:
        rnd = self.get_round(round_id)
        if rnd is None:
            raise StaleFormError("this comparison is not in the database (a form from another database or an old "
                                 "page); nothing was stored; open Compare again")
        if digest(rnd.prompt) != prompt_digest:
            raise StaleFormError("the prompt changed underneath this form (another tab or an old page); nothing was "
                                 "stored; open Compare again")
        return rnd

    def record_choice(self, round_id: str, prompt_digest: str, shown_choice: str, profile_version: int,
                      reason: str = "", elapsed_ms: int | None = None) -> dict[str, Any]:
        """Store the answer to a round in one transaction. Sending the same answer twice (a retry) stores it once;
        a different answer to an answered round is refused, so a stored answer is never rewritten."""
        if shown_choice not in CHOICES:
            raise FeedbackError(f"field 'choice': {shown_choice!r} is not one of A, B, tie")
        reason = check_field(reason or "", "reason", MAX_REASON_CHARS, allow_empty=True).strip()
        if "\n" in reason:
            reason = " ".join(reason.split())
        rnd = self._fresh_round(round_id, prompt_digest)
        winner = "tie" if shown_choice == "tie" else rnd.slot(shown_choice)
        with self.transaction() as conn:
            old = conn.execute("SELECT * FROM choices WHERE round_id = ?", (round_id,)).fetchone()
            if old is not None:
                if old["shown_choice"] == shown_choice and old["reason"] == reason:
                    return dict(old)
                raise StaleFormError(f"this comparison was already answered ({old['shown_choice']} at "
                                     f"{old['created_at']}); the stored answer is kept; open Compare again")
            cur = conn.execute(
                "INSERT INTO choices (round_id, created_at, profile_version, shown_choice, winner, reason, elapsed_ms)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (round_id, now(), profile_version, shown_choice, winner, reason,
                 None if elapsed_ms is None else max(0, int(elapsed_ms))))
            return dict(conn.execute("SELECT * FROM choices WHERE id = ?", (cur.lastrowid,)).fetchone())

    def record_edit(self, round_id: str, prompt_digest: str, position: str, edited: str,
                    profile_version: int) -> dict[str, Any]:
        """Store a candidate rewritten by the person (a new demonstration, and edited ≻ original)."""
        if position not in ("A", "B"):
            raise FeedbackError(f"field 'position': {position!r} is not A or B")
        edited = check_field(edited, "edited").strip()
        rnd = self._fresh_round(round_id, prompt_digest)
        original = rnd.shown[position]
        if edited == original.text.strip():
            raise FeedbackError("field 'edited' is unchanged from the candidate; change it, or choose instead")
        with self.transaction() as conn:
            slot = rnd.slot(position)
            old = conn.execute("SELECT * FROM edits WHERE round_id = ? AND candidate = ? AND edited = ?",
                               (round_id, slot, edited)).fetchone()
            if old is not None:
                return dict(old)
            cur = conn.execute(
                "INSERT INTO edits (round_id, created_at, profile_version, candidate, shown_position, prompt, "
                "original, original_method, original_run, original_seed, edited) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (round_id, now(), profile_version, slot, position, rnd.prompt, original.text, original.method,
                 original.run, original.seed, edited))
            return dict(conn.execute("SELECT * FROM edits WHERE id = ?", (cur.lastrowid,)).fetchone())

    # ---- reading ---------------------------------------------------------------------------------
    def answers(self) -> list[dict[str, Any]]:
        with self.reading() as conn:
            return [dict(r) for r in conn.execute("SELECT * FROM answers ORDER BY id")]

    def choice_for(self, round_id: str) -> dict[str, Any] | None:
        with self.reading() as conn:
            row = conn.execute("SELECT * FROM choices WHERE round_id = ?", (round_id,)).fetchone()
        return dict(row) if row else None

    def edits(self) -> list[dict[str, Any]]:
        with self.reading() as conn:
            return [dict(r) for r in conn.execute("SELECT * FROM edits ORDER BY id")]

    def counts(self) -> dict[str, int]:
        with self.reading() as conn:
            row = conn.execute(
                "SELECT (SELECT count(*) FROM choices), (SELECT count(*) FROM choices WHERE winner = 'tie'), "
                "(SELECT count(*) FROM edits), (SELECT count(*) FROM rounds)").fetchone()
        return {"choices": row[0], "ties": row[1], "edits": row[2], "rounds": row[3]}


def _statements(sql: str) -> list[str]:
    # Split on ';' at line ends: our migrations hold no string literals containing one.
    return [s.strip() for s in sql.split(";\n") if s.strip()]


def _round(row: sqlite3.Row) -> Round:
    def cand(p: str) -> Candidate:
        return Candidate(row[f"{p}_text"], row[f"{p}_method"], row[f"{p}_run"], int(row[f"{p}_seed"]))

    return Round(row["id"], row["created_at"], int(row["profile_version"]), row["prompt"], row["prompt_source"],
                 cand("x"), cand("y"), row["shown_order"])
