"""Anchor numbers from Dong et al.'s interim results (`dong2025/parsed_results_Jan5.csv`), mapped to the
prefbench method names so our table can be read next to theirs (different backbones and data sizes).

Their file names say which script produced a row: `ft_rm_general` = one RM for all users (vanilla),
`ft_rm` with a UID = one RM per user (individual), `id_rm` = user id in the prompt (conditional),
`prm` = P-RM (personalized), `rag_*` = RAG variants, `pretrained` = an off-the-shelf RM (untrained).
"""

from __future__ import annotations

import ast
import csv
from pathlib import Path
from typing import Any

from personalign.errors import DataError
from personalign.settings import data_dir

ANCHOR_FILE = Path("dong2025") / "parsed_results_Jan5.csv"


def method_of(filename: str, method: str) -> str:
    if "ft_rm_general" in filename:
        return "vanilla"
    return {"ft_rm": "individual", "id_rm": "conditional", "prm": "personalized", "rag": "rag",
            "pretrained": "untrained"}.get(method, method)


def _num(value: str) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return None if x != x else x  # NaN → None


def load_anchors(data_path: str | Path | None = None) -> list[dict[str, Any]]:
    """Every row of the anchor CSV with our method name, mean/worst user accuracy and tax columns."""
    path = data_dir(data_path) / ANCHOR_FILE
    if not path.is_file():
        raise DataError(f"{path}: anchor results not found; check the data root (--data-dir)")
    rows = []
    with path.open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            try:
                per_user = [_num(x) for x in ast.literal_eval(row["Acc_List"])]
            except (ValueError, SyntaxError):
                per_user = []
            accs = [x for x in per_user if x is not None]
            rows.append({
                "method": method_of(row["Filename"], row["Method"]),
                "model": row["Model"],
                "dataset": row["Dataset"],
                "train_size": _num(row["Train_Size"]),
                "mean_acc": _num(row["Avg_Acc"]),
                "worst_acc": min(accs) if accs else None,
                "chat": _num(row["Avg_Chat"]),
                "chat_hard": _num(row["Avg_ChatH"]),
                "safety": _num(row["Avg_Safe"]),
                "reasoning": _num(row["Avg_Reas"]),
                "file": row["Filename"],
            })
    return rows


def headline_anchors(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (method, model, dataset): the largest training size, dropping failed runs (mean 0)."""
    best: dict[tuple[str, str, str], dict[str, Any]] = {}
    for r in rows:
        if not r["mean_acc"]:
            continue
        key = (r["method"], r["model"], r["dataset"])
        size = r["train_size"] or 0
        if key not in best or size > (best[key]["train_size"] or 0):
            best[key] = r
    return sorted(best.values(), key=lambda r: (r["dataset"], r["model"], r["method"]))
