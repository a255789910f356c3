"""General preference pairs for the shared (generic) component: Anthropic HH helpful and harmless.

The personalization tax is a drop in general reward-model skill, so the shared component must first have
some: methods get these pairs as one more pseudo-user. Sources: the cleaned HH *helpful* test set (DSP's
copy, `text[2]` with `score[2]`) and the *harmless* half of `harmless-base_test` that the tax sets do not
use (the two halves are split by prompt hash, `HARMLESS_SALT`). `disjoint_from` drops any pair whose
prompt or response also occurs in the tax sets.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from personalign.errors import DataError
from personalign.io import read_json
from personalign.prefbench.data.tax import TaxPair, hh_harmless_half, split_dialogue
from personalign.settings import data_dir

HELPFUL_FILE = Path("hh_rlhf") / "dsp_cleaned_helpful.test.json"


def load_hh_helpful(root: Path) -> list[TaxPair]:
    path = root / HELPFUL_FILE
    records = read_json(path, expected="a list of {text: [2 dialogues], score: [2 numbers]}")
    if not isinstance(records, list):
        raise DataError(f"{path}: expected a JSON list of {{text, score}} records")
    pairs = []
    for i, rec in enumerate(records):
        text, score = rec.get("text"), rec.get("score") if isinstance(rec, dict) else (None, None)
        if not (isinstance(text, list) and isinstance(score, list) and len(text) == len(score) == 2):
            raise DataError(f"{path}: record {i} needs 'text' and 'score' lists of two")
        if score[0] == score[1]:
            continue
        good, bad = (text[0], text[1]) if score[0] > score[1] else (text[1], text[0])
        prompt, chosen = split_dialogue(good)
        other_prompt, rejected = split_dialogue(bad)
        if prompt == other_prompt and chosen and rejected and chosen != rejected:
            pairs.append(TaxPair(prompt, chosen, rejected, "general", "hh_rlhf/helpful"))
    return pairs


def load_general(data_path: str | Path | None = None, max_pairs: int = 2000, seed: int = 0) -> list[TaxPair]:
    """At most `max_pairs` general pairs, half helpful and half harmless (seeded sample)."""
    root = data_dir(data_path)
    rng = np.random.default_rng(seed)
    helpful = load_hh_helpful(root)
    harmless = [TaxPair(p, c, r, "general", "hh_rlhf/harmless-base") for p, c, r in hh_harmless_half(root, "general")]
    kept: list[TaxPair] = []
    for group, share in ((helpful, max_pairs // 2), (harmless, max_pairs - max_pairs // 2)):
        if len(group) > share:
            group = [group[i] for i in np.sort(rng.choice(len(group), size=share, replace=False))]
        kept.extend(group)
    return kept


def disjoint_from(general: Sequence[TaxPair], tax: Sequence[TaxPair]) -> tuple[list[TaxPair], int]:
    """`general` without pairs sharing a prompt or a response with `tax`; returns them and the count dropped."""
    seen = {p.prompt for p in tax} | {p.chosen for p in tax} | {p.rejected for p in tax}
    kept = [p for p in general if p.prompt not in seen and p.chosen not in seen and p.rejected not in seen]
    return kept, len(general) - len(kept)
