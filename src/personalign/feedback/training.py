"""`personalize --feedback DB`: the studio's answers as the inputs the trainers already take.

dpo gets its pair file (chosen ≻ rejected from choices and edits); ditto and sft get the profile's
demonstrations plus the person's edits. What was used is written into the run dir, so the run is
reproducible after the database has grown, and a resumed run trains on the same data it started with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from personalign.errors import PersonalignError
from personalign.feedback.export import feedback_demonstrations, feedback_pairs
from personalign.io import atomic_write_jsonl, read_jsonl
from personalign.profiles.schema import Demonstration, Profile

PAIRS_FILE = "feedback_pairs.jsonl"
DEMOS_FILE = "feedback_demonstrations.jsonl"
PAIR_METHODS = ("dpo",)
DEMO_METHODS = ("ditto", "ditto+prompt", "sft", "sft+prompt")


def read_feedback(method: str, db: str | Path, profile: Profile, run_path: Path | None, resume: bool) -> list[dict]:
    """The rows `method` trains on (from the run dir's snapshot when resuming); errors before any model loads."""
    name = PAIRS_FILE if method in PAIR_METHODS else DEMOS_FILE
    if method not in PAIR_METHODS + DEMO_METHODS:
        raise PersonalignError(f"--feedback: method {method!r} cannot use feedback; use one of "
                               f"{', '.join(PAIR_METHODS + DEMO_METHODS)}")
    if resume and run_path is not None and (run_path / name).is_file():
        return read_jsonl(run_path / name)
    if method in PAIR_METHODS:
        return feedback_pairs(db, profile)
    return [d.model_dump() for d in feedback_demonstrations(db, profile)]


def apply_feedback(method: str, rows: list[dict], profile: Profile, method_fields: dict[str, Any],
                   run_path: Path) -> tuple[Profile, dict[str, Any]]:
    """Snapshot `rows` into the run dir and hand them to the method the way it already reads its data."""
    if method in PAIR_METHODS:
        if method_fields.get("pairs"):
            from personalign.methods.dpo import load_pairs

            rows = [*load_pairs(method_fields["pairs"]), *rows]
        path = atomic_write_jsonl(run_path / PAIRS_FILE, rows)
        return profile, {**method_fields, "pairs": str(path)}
    atomic_write_jsonl(run_path / DEMOS_FILE, rows)
    demos = [*profile.demonstrations, *(Demonstration.model_validate(r) for r in rows)]
    return profile.model_copy(update={"demonstrations": demos}), method_fields
