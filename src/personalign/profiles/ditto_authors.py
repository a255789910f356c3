"""Profiles and text pools for one author of DITTO's author sets (CMCC, CCAT50) in `<data>/ditto/`.

CMCC: the author's `train` split gives the demonstrations, the `test` split the eval prompts with the
author's own text as reference. CCAT50: DITTO's train split is not public, so demonstrations are
rebuilt from the author's Reuters `C50train` texts in DITTO's own form (prompt "Write an article that
starts with the following: <first sentence>", output the whole text, 7 per author), never using a text
that DITTO holds out for validation or test. `authorship_pools` gives the texts an authorship judge may
train on and the disjoint texts its validity is measured on.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Literal

from personalign.errors import DataError
from personalign.io import read_jsonl, read_text
from personalign.profiles.schema import Demonstration, EvalPrompt, Profile
from personalign.settings import data_dir

Dataset = Literal["cmcc", "ccat50"]
DATASETS: tuple[str, ...] = ("cmcc", "ccat50")
PROCESSED = "ditto_processed.jsonl"
RAW = "ccat50_raw.jsonl"
AUTHOR_IDS = "ccat50_author_ids.json"
CCAT50_PROMPT = "Write an article that starts with the following: "
DITTO_DEMOS = 7  # DITTO's demonstrations per author
# The first sentence ends at ., ! or ? followed by space and a capital or quote; good enough for news
# leads (DITTO used a sentence tokenizer; a lead that ends in an abbreviation may split differently).
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
_TASKS = {"cmcc": "write essays and email replies on social issues", "ccat50": "write Reuters news articles"}


def normalize_text(text: str) -> str:
    """Whitespace-collapsed text: the key used to match DITTO's texts to the raw corpus."""
    return re.sub(r"\s+", " ", text).strip()


def first_sentence(text: str) -> str:
    """The first sentence of the first paragraph, with its own spacing kept (as DITTO's prompts keep it)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    first = lines[0] if lines else ""
    return _SENTENCE_END.split(first, maxsplit=1)[0]


def ditto_dir(explicit: str | Path | None = None) -> Path:
    folder = data_dir(explicit) / "ditto"
    if not (folder / PROCESSED).is_file():
        raise DataError(f"{folder / PROCESSED}: file not found; point --data-dir at the folder that holds ditto/")
    return folder


@lru_cache(maxsize=4)
def _processed(folder: Path) -> tuple[dict, ...]:
    rows = read_jsonl(folder / PROCESSED)
    for lineno, row in enumerate(rows, start=1):
        missing = {"dataset", "split", "author_id", "prompt", "output"} - set(row)
        if missing:
            raise DataError(f"{folder / PROCESSED}:{lineno}: missing fields {sorted(missing)}")
    return tuple(rows)


@lru_cache(maxsize=2)
def _raw(folder: Path) -> tuple[dict, ...]:
    return tuple(read_jsonl(folder / RAW))


@lru_cache(maxsize=2)
def _ccat50_names(folder: Path) -> dict[int, str]:
    path = folder / AUTHOR_IDS
    try:
        data = json.loads(read_text(path))
        return {int(k): str(v) for k, v in data.items()}
    except (json.JSONDecodeError, ValueError, AttributeError):
        raise DataError(f"{path}: expected a JSON object {{author_id: author name}}") from None


def author_ids(dataset: Dataset, data: str | Path | None = None) -> list[int]:
    """All author ids of a data set, sorted."""
    _check_dataset(dataset)
    rows = _processed(ditto_dir(data))
    return sorted({int(r["author_id"]) for r in rows if r["dataset"] == dataset})


def _check_dataset(dataset: str) -> None:
    if dataset not in DATASETS:
        raise DataError(f"dataset {dataset!r}: unknown; choose one of {', '.join(DATASETS)}")


def _rows(folder: Path, dataset: str, author: int | None = None, splits: tuple[str, ...] = ()) -> list[dict]:
    return [
        r for r in _processed(folder)
        if r["dataset"] == dataset and (author is None or int(r["author_id"]) == author)
        and (not splits or r["split"] in splits)
    ]


def _heldout_keys(folder: Path) -> set[str]:
    """Every CCAT50 text DITTO holds out (val/test, all authors): never a demonstration or judge training text."""
    return {normalize_text(r["output"]) for r in _rows(folder, "ccat50", splits=("val", "test"))}


def ccat50_train_texts(folder: Path, author: int) -> list[str]:
    """The author's C50train texts minus anything DITTO holds out, in corpus order."""
    names = _ccat50_names(folder)
    if author not in names:
        raise DataError(f"{folder / AUTHOR_IDS}: no author id {author}; valid ids are 0..{max(names)}")
    excluded = _heldout_keys(folder)
    texts = [
        r["text"] for r in _raw(folder)
        if r.get("author") == names[author] and r.get("split") == "C50train"
        and normalize_text(r["text"]) not in excluded
    ]
    return texts


def ccat50_demonstration(text: str) -> Demonstration:
    """DITTO's CCAT50 form: the first sentence as the prompt, the whole article (paragraphs joined) as output."""
    return Demonstration(prompt=CCAT50_PROMPT + first_sentence(text), output=normalize_text(text))


def author_profile(
    dataset: Dataset, author: int, data: str | Path | None = None, n_demos: int = DITTO_DEMOS, seed: int = 0
) -> Profile:
    """The profile of one author: demonstrations as in DITTO, test prompts with the author's references."""
    _check_dataset(dataset)
    folder = ditto_dir(data)
    if dataset == "cmcc":
        train = _rows(folder, "cmcc", author, ("train",))
        if not train:
            raise DataError(f"{folder / PROCESSED}: cmcc has no train rows for author {author}; "
                            f"valid ids are {author_ids('cmcc', data)}")
        demos = [Demonstration(prompt=r["prompt"], output=r["output"]) for r in train][:n_demos]
        name = f"CMCC author {author}"
    else:
        texts = ccat50_train_texts(folder, author)
        if len(texts) < n_demos:
            raise DataError(f"{folder / RAW}: author {author} has {len(texts)} usable C50train texts, "
                            f"fewer than {n_demos}; lower n_demos")
        picked = random.Random(seed * 1000 + author).sample(texts, n_demos)
        demos = [ccat50_demonstration(t) for t in picked]
        name = f"CCAT50 author {author} ({_ccat50_names(folder)[author]})"
    test = _rows(folder, dataset, author, ("test",))
    return Profile(
        name=name,
        task=_TASKS[dataset],
        demonstrations=demos,
        eval_prompts=[EvalPrompt(prompt=r["prompt"], reference=r["output"]) for r in test],
    )


@dataclass
class AuthorshipPools:
    """Texts per author: `train` for fitting an authorship judge, `heldout` (disjoint) for its validity AUC.

    `heldout` holds the eval references (DITTO's test split) too: they are real texts never used in
    training, and they are exactly what generations are compared against.
    """

    train: dict[int, list[str]] = field(default_factory=dict)
    heldout: dict[int, list[str]] = field(default_factory=dict)


def authorship_pools(
    dataset: Dataset, data: str | Path | None = None, max_per_author: int = 20, seed: int = 0
) -> AuthorshipPools:
    """Per-author train/held-out text pools for the authorship judge; no text is in both.

    CMCC: train = train + val splits, held out = test split (the corpus has ~12 texts per author).
    CCAT50: train = C50train texts (minus DITTO's val/test), held out = DITTO's test texts + C50test
    texts. `max_per_author` caps each pool (sampled with `seed`) to keep CPU runs short.
    """
    _check_dataset(dataset)
    folder = ditto_dir(data)
    rng = random.Random(seed)
    pools = AuthorshipPools()
    for author in author_ids(dataset, data):
        if dataset == "cmcc":
            train = [r["output"] for r in _rows(folder, "cmcc", author, ("train", "val"))]
            heldout = [r["output"] for r in _rows(folder, "cmcc", author, ("test",))]
        else:
            name = _ccat50_names(folder)[author]
            train = ccat50_train_texts(folder, author)
            test_rows = [r["output"] for r in _rows(folder, "ccat50", author, ("test",))]
            seen = {normalize_text(t) for t in test_rows} | _heldout_keys(folder)
            extra = [r["text"] for r in _raw(folder) if r.get("author") == name and r.get("split") == "C50test"
                     and normalize_text(r["text"]) not in seen]
            heldout = test_rows + rng.sample(extra, min(len(extra), max(0, max_per_author - len(test_rows))))
            train = rng.sample(train, min(len(train), max_per_author))
            train = [normalize_text(t) for t in train]
            heldout = [normalize_text(t) for t in heldout]
        pools.train[author] = train
        pools.heldout[author] = heldout
    # A raw-corpus text can sit under two authors (see MANIFEST.md); such a text never counts as held out.
    train_keys = {normalize_text(t) for texts in pools.train.values() for t in texts}
    for author, texts in pools.heldout.items():
        pools.heldout[author] = [t for t in texts if normalize_text(t) not in train_keys]
    _assert_disjoint(pools)
    return pools


def _assert_disjoint(pools: AuthorshipPools) -> None:
    train = {normalize_text(t) for texts in pools.train.values() for t in texts}
    leaked = [t for texts in pools.heldout.values() for t in texts if normalize_text(t) in train]
    if leaked:
        raise DataError(f"{len(leaked)} held-out texts also occur in the judge's training pool: {leaked[0][:80]!r}")
