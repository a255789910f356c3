"""Labeled preference pairs for validating judges and training reward models, from the shared data sets or a file.

Every set becomes `LabeledPair(prompt, a, b, label)` with label A | B | tie. Which of the two answers is
shown as `a` is decided by a seeded coin per item, so a judge that always says "A" scores at chance, not
100 %. Built-in names: prometheus-hhh, autoj, llmbar (natural + adversarial), llmbar-natural,
llmbar-adversarial, mtbench-human, hh-rlhf-harmless; or a JSONL/JSON file with `prompt, chosen, rejected`
(optional `margin`) or `prompt, a, b, label` (optional `rubric`).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from personalign.errors import DataError
from personalign.io import read_jsonl, read_text
from personalign.judges.base import Label
from personalign.prefbench.data.tax import hh_rlhf_pairs
from personalign.settings import data_dir


@dataclass
class LabeledPair:
    prompt: str
    a: str
    b: str
    label: Label
    rubric: str | None = None  # a rubric that comes with the item (prometheus-hhh), else the judge's own
    source: str = ""
    margin: float | None = None

    def chosen_rejected(self) -> tuple[str, str] | None:
        """(chosen, rejected), or None for a tie."""
        if self.label == "tie":
            return None
        return (self.a, self.b) if self.label == "A" else (self.b, self.a)


def _ordered(prompt: str, chosen: str, rejected: str, rng: random.Random, **extra: object) -> LabeledPair:
    if rng.random() < 0.5:
        return LabeledPair(prompt, chosen, rejected, "A", **extra)  # type: ignore[arg-type]
    return LabeledPair(prompt, rejected, chosen, "B", **extra)  # type: ignore[arg-type]


def _section(text: str, header: str, next_header: str) -> str:
    match = re.search(re.escape(header) + r"\s*(.*?)\s*" + re.escape(next_header), text, re.DOTALL)
    if not match:
        raise DataError(f"prometheus item lacks the section {header!r}")
    return match.group(1).strip()


def _load_json_or_jsonl(path: Path) -> list[dict]:
    text = read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return read_jsonl(path)  # several files are JSONL despite the .json name
    return data if isinstance(data, list) else [data]


def _prometheus_hhh(root: Path, rng: random.Random) -> list[LabeledPair]:
    rows = _load_json_or_jsonl(root / "prometheus" / "hhh_alignment_eval.json")
    pairs = []
    for row in rows:
        chosen_prompt, rejected_prompt = row["chosen_instruction"], row["rejected_instruction"]
        instruction = _section(chosen_prompt, "###The instruction to evaluate:", "###Response to evaluate:")
        chosen = _section(chosen_prompt, "###Response to evaluate:", "###Score Rubrics:")
        rejected = _section(rejected_prompt, "###Response to evaluate:", "###Score Rubrics:")
        rubric = _section(chosen_prompt, "###Score Rubrics:", "###Feedback:")
        pairs.append(_ordered(instruction, chosen, rejected, rng, rubric=rubric, source=f"hhh-{row['source']}"))
    return pairs


def _autoj(root: Path, rng: random.Random) -> list[LabeledPair]:
    # label 0: response 1 better, 1: response 2 better, 2: tie (as in prometheus-eval's data loader).
    pairs = []
    for row in _load_json_or_jsonl(root / "prometheus" / "autoj_pairwise.json"):
        r1, r2 = row["response 1"].strip(), row["response 2"].strip()
        source = f"autoj-{row['scenario']}"
        if row["label"] == 2:
            a, b = (r1, r2) if rng.random() < 0.5 else (r2, r1)
            pairs.append(LabeledPair(row["prompt"], a, b, "tie", source=source))
        else:
            chosen, rejected = (r1, r2) if row["label"] == 0 else (r2, r1)
            pairs.append(_ordered(row["prompt"], chosen, rejected, rng, source=source))
    return pairs


def _llmbar_files(root: Path, names: list[str], rng: random.Random) -> list[LabeledPair]:
    pairs = []
    for name in names:
        for row in _load_json_or_jsonl(root / "rewardbench_proxies" / "llmbar" / f"{name}.json"):
            chosen, rejected = (row["output_1"], row["output_2"]) if row["label"] == 1 else (row["output_2"],
                                                                                               row["output_1"])
            pairs.append(_ordered(row["input"], chosen, rejected, rng, source=name))
    return pairs


ADVERSARIAL = ["llmbar_Adversarial_Neighbor", "llmbar_Adversarial_GPTInst", "llmbar_Adversarial_GPTOut",
               "llmbar_Adversarial_Manual"]


def _hh_harmless(root: Path, rng: random.Random) -> list[LabeledPair]:
    return [_ordered(prompt, chosen, rejected, rng, source="hh-rlhf-harmless")
            for prompt, chosen, rejected in hh_rlhf_pairs(root / "hh_rlhf" / "harmless-base_test.jsonl.gz")]


BUILTIN: dict[str, Callable[[Path, random.Random], list[LabeledPair]]] = {
    "prometheus-hhh": _prometheus_hhh,
    "autoj": _autoj,
    "llmbar": lambda root, rng: _llmbar_files(root, ["llmbar_Natural", *ADVERSARIAL], rng),
    "llmbar-natural": lambda root, rng: _llmbar_files(root, ["llmbar_Natural"], rng),
    "llmbar-adversarial": lambda root, rng: _llmbar_files(root, ADVERSARIAL, rng),
    "mtbench-human": lambda root, rng: _llmbar_files(root, ["processed_mtbench_human"], rng),
    "hh-rlhf-harmless": _hh_harmless,
}


def _from_file(path: Path, rng: random.Random) -> list[LabeledPair]:
    rows = _load_json_or_jsonl(path)
    pairs = []
    for index, row in enumerate(rows, 1):
        where = f"{path}: item {index}"
        if not isinstance(row, dict) or "prompt" not in row:
            raise DataError(f"{where}: needs a 'prompt' field plus 'chosen'/'rejected' or 'a'/'b'/'label'")
        if "chosen" in row and "rejected" in row:
            margin = row.get("margin")
            pairs.append(_ordered(str(row["prompt"]), str(row["chosen"]), str(row["rejected"]), rng,
                                  source=path.name, margin=None if margin is None else float(margin)))
        elif {"a", "b", "label"} <= row.keys():
            if row["label"] not in ("A", "B", "tie"):
                raise DataError(f"{where}: field 'label' is {row['label']!r}; use A, B or tie")
            rubric = row.get("rubric")
            pairs.append(LabeledPair(str(row["prompt"]), str(row["a"]), str(row["b"]), row["label"],
                                     rubric=None if rubric is None else str(rubric), source=path.name))
        else:
            raise DataError(f"{where}: needs 'chosen' and 'rejected' (or 'a', 'b' and 'label' A|B|tie)")
    if not pairs:
        raise DataError(f"{path}: no labeled pairs; add lines with prompt, chosen, rejected")
    return pairs


def load_labeled(name_or_path: str, data: str | Path | None = None, seed: int = 0,
                 limit: int | None = None) -> list[LabeledPair]:
    """A built-in set by name or a file; `limit` takes a seeded random sample of that many items."""
    rng = random.Random(seed)
    path = Path(name_or_path)
    if name_or_path in BUILTIN:
        pairs = BUILTIN[name_or_path](data_dir(data), rng)
    elif path.is_file():
        pairs = _from_file(path, rng)
    else:
        raise DataError(
            f"--data {name_or_path!r}: not a file and not a built-in set; use a JSONL path or one of "
            f"{', '.join(BUILTIN)}"
        )
    if limit is not None and limit < len(pairs):
        pairs = random.Random(seed + 1).sample(pairs, limit)
    return pairs
