"""Turn stored feedback into training data: preference pairs (for dpo) and demonstrations (for ditto, sft).

Pairs: a choice of A or B gives winner ≻ loser (ties give no pair); an edit gives edited ≻ original, as in
DITTO where a correction outranks what the model wrote. Demonstrations: every edit, the person's own text.
Answers on the profile's evaluation prompts are held out by default (evaluation data never trains); a
caller must opt in with `include_eval=True`, which means those prompts no longer measure anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from personalign.errors import DataError
from personalign.feedback.db import FeedbackDB
from personalign.profiles.schema import Demonstration, Profile

FORMATS = ("pairs", "demonstrations")


def _norm(text: str) -> str:
    return " ".join(text.split()).casefold()


@dataclass
class Export:
    rows: list[dict[str, Any]]
    held_out: int = 0  # answers left out because their prompt is an evaluation prompt
    skipped: dict[str, int] = field(default_factory=dict)  # other answers that give no row, by why

    def summary(self, what: str) -> str:
        parts = [f"{len(self.rows)} {what}"]
        if self.held_out:
            parts.append(f"{self.held_out} answers on evaluation prompts held out (--include-eval-prompts uses them)")
        parts += [f"{n} {why}" for why, n in self.skipped.items() if n]
        return "; ".join(parts)


def _held_out(prompt: str, prompt_source: str | None, eval_prompts: set[str], include_eval: bool) -> bool:
    return not include_eval and (prompt_source == "eval" or _norm(prompt) in eval_prompts)


def _eval_set(profile: Profile | None) -> set[str]:
    return {_norm(p.prompt) for p in profile.eval_prompts} if profile is not None else set()


def export_pairs(db: FeedbackDB, profile: Profile | None = None, include_eval: bool = False) -> Export:
    """`{prompt, chosen, rejected, kind, chosen_source, rejected_source, created_at}` rows, oldest first."""
    evals = _eval_set(profile)
    out = Export([], skipped={"ties": 0})
    for row in db.answers():
        if _held_out(row["prompt"], row["prompt_source"], evals, include_eval):
            out.held_out += 1
            continue
        if row["winner"] == "tie":
            out.skipped["ties"] += 1
            continue
        win, lose = ("x", "y") if row["winner"] == "x" else ("y", "x")
        out.rows.append({
            "prompt": row["prompt"], "chosen": row[f"{win}_text"], "rejected": row[f"{lose}_text"], "kind": "choice",
            "chosen_source": _source(row, win), "rejected_source": _source(row, lose),
            "created_at": row["created_at"], "profile_version": row["profile_version"]})
    round_sources = _round_sources(db)
    for edit in db.edits():
        if _held_out(edit["prompt"], round_sources.get(edit["round_id"]), evals, include_eval):
            out.held_out += 1
            continue
        out.rows.append({
            "prompt": edit["prompt"], "chosen": edit["edited"], "rejected": edit["original"], "kind": "edit",
            "chosen_source": {"method": "human-edit"},
            "rejected_source": {"method": edit["original_method"], "run": edit["original_run"],
                                "seed": edit["original_seed"]},
            "created_at": edit["created_at"], "profile_version": edit["profile_version"]})
    return out


def export_demonstrations(db: FeedbackDB, profile: Profile | None = None, include_eval: bool = False) -> Export:
    """`{prompt, output, original, source, created_at}` rows: each edit is a demonstration in the person's words."""
    evals = _eval_set(profile)
    out = Export([])
    round_sources = _round_sources(db)
    for edit in db.edits():
        if _held_out(edit["prompt"], round_sources.get(edit["round_id"]), evals, include_eval):
            out.held_out += 1
            continue
        out.rows.append({"prompt": edit["prompt"], "output": edit["edited"], "original": edit["original"],
                         "source": {"method": edit["original_method"], "run": edit["original_run"],
                                    "seed": edit["original_seed"]},
                         "created_at": edit["created_at"], "profile_version": edit["profile_version"]})
    return out


def export(db: FeedbackDB, fmt: str, profile: Profile | None = None, include_eval: bool = False) -> Export:
    if fmt not in FORMATS:
        raise DataError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    return (export_pairs if fmt == "pairs" else export_demonstrations)(db, profile, include_eval)


# ---- readers for the training methods (the same structures they already consume) ------------------------
def feedback_pairs(path: str | Path, profile: Profile | None = None,
                   include_eval: bool = False) -> list[dict[str, str]]:
    """`{prompt, chosen, rejected}` dicts, as `methods.dpo.load_pairs` returns; an error when there are none."""
    found = export_pairs(_open(path), profile, include_eval)
    if not found.rows:
        raise DataError(f"{path}: no training pairs ({found.summary('pairs')}); choose A or B or edit candidates "
                        "in the studio on prompts that are not evaluation prompts")
    return [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in found.rows]


def feedback_demonstrations(path: str | Path, profile: Profile | None = None,
                            include_eval: bool = False) -> list[Demonstration]:
    """Edited candidates as profile `Demonstration`s; an error when there are none."""
    found = export_demonstrations(_open(path), profile, include_eval)
    if not found.rows:
        raise DataError(f"{path}: no edited demonstrations ({found.summary('demonstrations')}); edit candidates "
                        "in the studio on prompts that are not evaluation prompts")
    return [Demonstration(prompt=r["prompt"], output=r["output"]) for r in found.rows]


def _open(path: str | Path) -> FeedbackDB:
    if not Path(path).is_file():
        raise DataError(f"{path}: feedback database not found; start `personalign studio --db {path}` first")
    return FeedbackDB(path)


def _source(row: dict[str, Any], slot: str) -> dict[str, Any]:
    return {"method": row[f"{slot}_method"], "run": row[f"{slot}_run"], "seed": row[f"{slot}_seed"]}


def _round_sources(db: FeedbackDB) -> dict[str, str]:
    with db.reading() as conn:
        return {r[0]: r[1] for r in conn.execute("SELECT id, prompt_source FROM rounds")}
