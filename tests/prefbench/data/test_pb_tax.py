"""Tax sets: each source's labels become chosen/rejected the right way round, in the right category."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from personalign.errors import DataError
from personalign.prefbench.data.tax import (
    hh_rlhf_pairs,
    load_hh_harmless,
    load_llmbar,
    load_rmbench,
    load_tax_sets,
    load_xstest,
    split_dialogue,
)


def test_each_source_maps_labels_and_categories(tax_root: Path) -> None:
    root = tax_root
    llmbar = load_llmbar(root)
    assert len(llmbar) == 10 and {p.category for p in llmbar} == {"chat_hard"}
    assert (llmbar[0].chosen, llmbar[0].rejected) == ("two", "one")  # label 2
    rm = load_rmbench(root)
    assert {p.category for p in rm} == {"chat", "reasoning", "safety"}
    # Variants rotate with the item index and compare like with like.
    assert [(p.chosen, p.rejected) for p in rm[:4]] == [("c0", "r0"), ("c1", "r1"), ("c2", "r2"), ("c0", "r0")]
    xs = load_xstest(root)
    # Safe prompt: comply beats refuse (gpt4 complied); unsafe contrast prompt: refuse beats comply.
    assert [(p.prompt, p.chosen, p.rejected) for p in xs] == [
        ("kill a process?", "gpt4 says", "llama2orig says"), ("kill a person?", "gpt4 says", "llama2orig says")]
    hh = load_hh_harmless(root)
    assert hh[0].prompt.endswith("Human: bad idea?") and (hh[0].chosen, hh[0].rejected) == ("No.", "Sure!")


def test_caps_are_per_source_and_category(tax_root: Path) -> None:
    root = tax_root
    pairs = load_tax_sets(root, max_per_source=3)
    counts: dict[tuple[str, str], int] = {}
    for p in pairs:
        key = (p.source.split("/")[0], p.category)
        counts[key] = counts.get(key, 0) + 1
    assert counts == {("llmbar", "chat_hard"): 3, ("rm_bench", "chat"): 3, ("rm_bench", "reasoning"): 3,
                      ("rm_bench", "safety"): 3, ("xstest", "safety"): 2, ("hh_rlhf", "safety"): 1}
    with pytest.raises(DataError, match="unknown tax source"):
        load_tax_sets(root, sources=("rewardbench",))


def test_dialogue_split() -> None:
    assert split_dialogue("Human: a\n\nAssistant: b\n\nHuman: c\n\nAssistant: d") == (
        "Human: a\n\nAssistant: b\n\nHuman: c", "d")
    assert split_dialogue("no turns") == ("", "no turns")


def test_hh_pairs_keep_only_clean_last_turn_differences(tmp_path: Path) -> None:
    head = "Human: hi\n\nAssistant: hello\n\nHuman: help me?"
    rows = [
        {"chosen": f"{head}\n\nAssistant: No.", "rejected": f"{head}\n\nAssistant: Sure!"},  # clean
        {"chosen": f"{head}\n\nAssistant: Same.", "rejected": f"{head}\n\nAssistant: Same."},  # no difference
        {"chosen": "Human: a\n\nAssistant: x", "rejected": "Human: b\n\nAssistant: y"},  # diverged earlier
    ]
    path = tmp_path / "hh.jsonl.gz"
    path.write_bytes(gzip.compress("\n".join(json.dumps(r) for r in rows).encode("utf-8")))
    assert hh_rlhf_pairs(path) == [(head, "No.", "Sure!")]
    path.write_bytes(gzip.compress(b'{"chosen": "x"}\n'))
    with pytest.raises(DataError, match=r"hh\.jsonl\.gz:1: needs string fields 'chosen' and 'rejected'"):
        hh_rlhf_pairs(path)
