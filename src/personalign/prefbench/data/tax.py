"""Tax sets for the "personalization tax": general reward-model skills a personalized RM may lose.

RewardBench itself lives on the hub; these are its public sources, on disk under the data root:
LLMBar natural + adversarial (→ chat_hard), RM-Bench chat (→ chat), code (→ reasoning) and safety
(→ safety), XSTest completions (→ safety: comply with safe prompts, refuse unsafe ones) and HH-RLHF
harmless-base test (→ safety). Each is mapped to `prompt, chosen, rejected, category, source`.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from personalign.errors import DataError
from personalign.io import enumerate_jsonl, read_json
from personalign.prefbench.schema import split_of
from personalign.settings import data_dir

TAX_CATEGORIES = ("chat", "chat_hard", "safety", "reasoning")
LLMBAR_FILES = ("llmbar_Natural.json", "llmbar_Adversarial_Neighbor.json", "llmbar_Adversarial_GPTInst.json",
                "llmbar_Adversarial_GPTOut.json", "llmbar_Adversarial_Manual.json")
RMBENCH_FILES = {"chat_filtered.json": "chat", "code_filtered.json": "reasoning",
                 "safety-refuse_filtered.json": "safety", "safety-response_filtered.json": "safety"}
XSTEST_MODELS = ("gpt4", "llama2orig", "llama2new", "mistralinstruct", "mistralguard")


@dataclass(frozen=True)
class TaxPair:
    """A general-purpose comparison: `chosen` is better than `rejected` by the source's own label."""

    prompt: str
    chosen: str
    rejected: str
    category: str
    source: str


def load_llmbar(root: Path) -> list[TaxPair]:
    pairs = []
    for name in LLMBAR_FILES:
        path = root / "rewardbench_proxies" / "llmbar" / name
        for i, rec in enumerate(read_json(path)):
            if rec.get("label") not in (1, 2):
                raise DataError(f"{path}: record {i} has label {rec.get('label')!r}; expected 1 or 2")
            good, bad = ("output_1", "output_2") if rec["label"] == 1 else ("output_2", "output_1")
            pairs.append(TaxPair(rec["input"], rec[good], rec[bad], "chat_hard", f"llmbar/{path.stem}"))
    return pairs


def load_rmbench(root: Path) -> list[TaxPair]:
    """RM-Bench items carry 3 style variants (concise, detailed, markdown) of chosen and rejected; compare
    like with like and rotate the variant by item so every style is represented without tripling the set."""
    pairs = []
    for name, category in RMBENCH_FILES.items():
        path = root / "rewardbench_proxies" / "rm_bench" / name
        for i, rec in enumerate(read_json(path)):
            chosen, rejected = rec.get("chosen"), rec.get("rejected")
            if not isinstance(chosen, list) or not isinstance(rejected, list) or not chosen or not rejected:
                raise DataError(f"{path}: record {i} needs non-empty 'chosen' and 'rejected' lists")
            v = i % min(len(chosen), len(rejected))
            pairs.append(TaxPair(rec["prompt"], chosen[v], rejected[v], category, f"rm_bench/{path.stem}"))
    return pairs


def load_xstest(root: Path) -> list[TaxPair]:
    """Pairs from the human-labeled completions of 5 models: for a safe prompt a full compliance beats a
    full refusal (RewardBench's xstest-should-respond); for an unsafe one (type `contrast_*`) the reverse."""
    folder = root / "rewardbench_proxies" / "xstest"
    by_prompt: dict[str, dict[str, Any]] = {}
    for model in XSTEST_MODELS:
        path = folder / f"xstest_v2_completions_{model}.csv"
        with path.open(encoding="utf-8", newline="") as handle:
            for row in csv.DictReader(handle):
                entry = by_prompt.setdefault(row["id"], {"prompt": row["prompt"], "type": row["type"],
                                                         "comply": None, "refuse": None})
                label = row.get("final_label", "")
                key = "comply" if label.startswith("1_") else "refuse" if label.startswith("2_") else None
                if key and entry[key] is None and row["completion"].strip():
                    entry[key] = row["completion"]
    pairs = []
    for pid in sorted(by_prompt, key=lambda s: (len(s), s)):
        e = by_prompt[pid]
        if e["comply"] is None or e["refuse"] is None:
            continue
        unsafe = e["type"].startswith("contrast_")
        chosen, rejected = (e["refuse"], e["comply"]) if unsafe else (e["comply"], e["refuse"])
        pairs.append(TaxPair(e["prompt"], chosen, rejected, "safety", "xstest"))
    return pairs


def split_dialogue(text: str) -> tuple[str, str]:
    """An Anthropic HH dialogue → (everything before the last assistant turn, that turn)."""
    marker = "\n\nAssistant:"
    cut = text.rfind(marker)
    if cut < 0:
        return "", text.strip()
    return text[:cut].strip(), text[cut + len(marker):].strip()


def hh_rlhf_pairs(path: Path) -> list[tuple[str, str, str]]:
    """(prompt, chosen, rejected) of an HH-RLHF JSONL(.gz) file, keeping only clean pairs: the two dialogues
    share everything before the last assistant turn and that turn differs."""
    pairs = []
    for lineno, rec in enumerate_jsonl(path):
        if not isinstance(rec.get("chosen"), str) or not isinstance(rec.get("rejected"), str):
            raise DataError(f"{path}:{lineno}: needs string fields 'chosen' and 'rejected'")
        prompt, chosen = split_dialogue(rec["chosen"])
        rejected_prompt, rejected = split_dialogue(rec["rejected"])
        if prompt == rejected_prompt and chosen and rejected and chosen != rejected:
            pairs.append((prompt, chosen, rejected))
    return pairs


HARMLESS_SALT = "hh-harmless-tax"


def hh_harmless_half(root: Path, half: str) -> list[tuple[str, str, str]]:
    """The `tax` or `general` half of harmless-base test, split by prompt hash (a prompt never straddles)."""
    path = root / "hh_rlhf" / "harmless-base_test.jsonl.gz"
    if not path.is_file():
        raise DataError(f"{path}: file not found; check the data root (--data-dir)")
    want = "test" if half == "tax" else "train"
    return [p for p in hh_rlhf_pairs(path) if split_of(p[0], 0.5, salt=HARMLESS_SALT) == want]


def load_hh_harmless(root: Path) -> list[TaxPair]:
    return [TaxPair(prompt, chosen, rejected, "safety", "hh_rlhf/harmless-base")
            for prompt, chosen, rejected in hh_harmless_half(root, "tax")]


TAX_SOURCES = {"llmbar": load_llmbar, "rm_bench": load_rmbench, "xstest": load_xstest, "hh_harmless": load_hh_harmless}


def load_tax_sets(data_path: str | Path | None = None, max_per_source: int | None = 200, seed: int = 0,
                  sources: tuple[str, ...] = tuple(TAX_SOURCES)) -> list[TaxPair]:
    """All tax pairs, at most `max_per_source` per (source file, category), sampled with a fixed seed."""
    root = data_dir(data_path)
    rng = np.random.default_rng(seed)
    unknown = set(sources) - set(TAX_SOURCES)
    if unknown:
        raise DataError(f"unknown tax source(s) {sorted(unknown)}; choose from {', '.join(TAX_SOURCES)}")
    kept: list[TaxPair] = []
    for name in sources:
        groups: dict[tuple[str, str], list[TaxPair]] = {}
        for pair in TAX_SOURCES[name](root):
            groups.setdefault((pair.source, pair.category), []).append(pair)
        # LLMBar has five files; cap the whole source, not each file, so chat_hard stays balanced.
        merged: dict[str, list[TaxPair]] = {}
        for (_, category), group in groups.items():
            merged.setdefault(category, []).extend(group)
        for group in merged.values():
            if max_per_source is not None and len(group) > max_per_source:
                idx = np.sort(rng.choice(len(group), size=max_per_source, replace=False))
                group = [group[i] for i in idx]
            kept.extend(group)
    return kept
