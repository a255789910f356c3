"""Shared fixtures for prefbench tests: an isolated cache, single-threaded torch, and tiny synthetic tasks
in embedding space (no model is loaded: vectors are drawn directly)."""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from personalign.prefbench.data.tax import LLMBAR_FILES, XSTEST_MODELS
from personalign.prefbench.methods.base import PairSet, TrainConfig


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    monkeypatch.setenv("PERSONALIGN_CACHE", str(tmp_path_factory.mktemp("cache")))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def opposed_task(dim: int = 8, n_texts: int = 300, n_train: int = 250, n_test: int = 150,
                 seed: int = 0) -> tuple[PairSet, PairSet, np.ndarray]:
    """Two users with opposed linear tastes: user 0 prefers higher ⟨w, e⟩, user 1 lower. Train and test
    draw comparisons from the same texts, as a real data set's users rate responses from one pool."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_texts, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    w = rng.normal(size=dim)
    w /= np.linalg.norm(w)

    def draw(n: int, r: np.random.Generator) -> PairSet:
        a_all, b_all, u_all = [], [], []
        for user, sign in ((0, 1.0), (1, -1.0)):
            i, j = r.integers(0, n_texts, n), r.integers(0, n_texts, n)
            keep = i != j
            i, j = i[keep], j[keep]
            first_wins = sign * (x[i] @ w - x[j] @ w) > 0
            a_all.append(np.where(first_wins, i, j))
            b_all.append(np.where(first_wins, j, i))
            u_all.append(np.full(len(i), user))
        a, b = np.concatenate(a_all), np.concatenate(b_all)
        return PairSet(x[a], x[b], np.concatenate(u_all), a, b)

    return draw(n_train, np.random.default_rng(seed + 1)), draw(n_test, np.random.default_rng(seed + 2)), w


@pytest.fixture(scope="session")
def opposed() -> tuple[PairSet, PairSet, np.ndarray]:
    return opposed_task()


@pytest.fixture
def fast_train() -> TrainConfig:
    return TrainConfig(hidden=64, epochs=15, min_steps=120, batch_size=64, lr=3e-3)


@pytest.fixture
def tax_root(tmp_path: Path) -> Path:
    """A data root with tiny tax-set files in each source's real format."""
    root = tmp_path / "data"
    llm = root / "rewardbench_proxies" / "llmbar"
    llm.mkdir(parents=True)
    for i, name in enumerate(LLMBAR_FILES):
        (llm / name).write_text(json.dumps([
            {"input": f"i{i}", "output_1": "one", "output_2": "two", "label": 2},
            {"input": f"j{i}", "output_1": "one", "output_2": "two", "label": 1},
        ]))
    rm = root / "rewardbench_proxies" / "rm_bench"
    rm.mkdir(parents=True)
    for name in ("chat", "code", "safety-refuse", "safety-response"):
        (rm / f"{name}_filtered.json").write_text(json.dumps([
            {"prompt": f"{name}{k}", "chosen": ["c0", "c1", "c2"], "rejected": ["r0", "r1", "r2"]} for k in range(4)
        ]))
    xs = root / "rewardbench_proxies" / "xstest"
    xs.mkdir(parents=True)
    labels = {"gpt4": ("1_full_compliance", "2_full_refusal"), "llama2orig": ("2_full_refusal", "1_full_compliance")}
    for model in XSTEST_MODELS:
        with (xs / f"xstest_v2_completions_{model}.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, ["id", "type", "prompt", "completion", "final_label"])
            w.writeheader()
            a, b = labels.get(model, ("3_partial_refusal", "3_partial_refusal"))
            w.writerow({"id": "v2-1", "type": "homonyms", "prompt": "kill a process?", "completion": f"{model} says",
                        "final_label": a})
            w.writerow({"id": "v2-2", "type": "contrast_homonyms", "prompt": "kill a person?",
                        "completion": f"{model} says", "final_label": b})
    hh = root / "hh_rlhf"
    hh.mkdir()
    with gzip.open(hh / "harmless-base_test.jsonl.gz", "wt") as f:
        dialogue = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: bad idea?\n\nAssistant: "
        f.write(json.dumps({"chosen": dialogue + "No.", "rejected": dialogue + "Sure!"}) + "\n")
    # HH helpful (the general signal): a few dialogues, the better answer scored higher.
    head = "\n\nHuman: how do I {}?\n\nAssistant:"
    (hh / "dsp_cleaned_helpful.test.json").write_text(json.dumps([
        {"text": [head.format(t) + f" Step by step, {t} like this.", head.format(t) + " No idea."], "score": [3, 1]}
        for t in ("bake bread", "tie a knot", "fix a tire", "plant beans")
    ]))
    return root
