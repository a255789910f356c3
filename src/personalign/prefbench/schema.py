"""One record type for every preference source: `user_id, prompt, chosen, rejected, split` (+ `pair_id`).

Every loader returns a `PrefData`; everything downstream (characterization, features, methods) reads only
this. Validation errors are one line naming the source, the record and the field.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from personalign.errors import DataError

REQUIRED_FIELDS = ("user_id", "prompt", "chosen", "rejected", "split")
SPLITS = ("train", "test")


def comparison_id(prompt: str, a: str, b: str) -> str:
    """Order-free id of the comparison {a, b} under `prompt`: the same for every user who labeled it."""
    lo, hi = sorted((a, b))
    return hashlib.sha1(json.dumps([prompt, lo, hi]).encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class PrefPair:
    """User `user_id` preferred `chosen` over `rejected` as an answer to `prompt`."""

    user_id: str
    prompt: str
    chosen: str
    rejected: str
    split: str
    pair_id: str = ""

    @property
    def comparison(self) -> str:
        """The explicit `pair_id`, or one derived from the texts (same texts → same comparison)."""
        return self.pair_id or comparison_id(self.prompt, self.chosen, self.rejected)

    def to_dict(self) -> dict[str, str]:
        return {
            "user_id": self.user_id, "prompt": self.prompt, "chosen": self.chosen,
            "rejected": self.rejected, "split": self.split, "pair_id": self.comparison,
        }


@dataclass
class DimensionSpec:
    """Known preference dimensions of a data set (what Personalized Soups trains one model per) and each
    user's declared weights over them. `pairs` label comparisons per dimension (`user_id` = the dimension's
    name; train-side texts only); `from_users` instead says each dimension *is* the user of that name, whose
    train pairs are its labels (DSP's domains). `source_user` names the user a dimension's labels came from."""

    names: list[str]
    weights: dict[str, dict[str, float]]
    pairs: list[PrefPair] = field(default_factory=list)
    from_users: bool = False

    def source_user(self, name: str) -> str | None:
        return name if self.from_users else None


@dataclass
class PrefData:
    """A named set of labeled comparisons from several users, with train/test splits."""

    name: str
    pairs: list[PrefPair]
    meta: dict[str, Any] = field(default_factory=dict)
    dimensions: DimensionSpec | None = None

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def users(self) -> list[str]:
        """User ids in first-seen order (stable across runs because loaders are deterministic)."""
        return list(dict.fromkeys(p.user_id for p in self.pairs))

    def split(self, name: str) -> list[PrefPair]:
        return [p for p in self.pairs if p.split == name]

    def for_users(self, users: Iterable[str]) -> PrefData:
        wanted = set(users)
        unknown = wanted - set(self.users)
        if unknown:
            raise DataError(
                f"{self.name}: unknown user id(s) {sorted(unknown)}; known users: {', '.join(self.users)}"
            )
        return PrefData(self.name, [p for p in self.pairs if p.user_id in wanted], dict(self.meta), self.dimensions)

    def check_splits(self, required: Sequence[str] = SPLITS) -> None:
        """Every user needs pairs in every required split; say which user/split is empty."""
        counts = Counter((p.user_id, p.split) for p in self.pairs)
        if not self.pairs:
            raise DataError(f"{self.name}: no preference pairs; check the source and its filters")
        for split in required:
            if not any(s == split for (_, s) in counts):
                raise DataError(
                    f"{self.name}: split {split!r} is empty; every data set needs 'train' and 'test' rows"
                )
            for user in self.users:
                if counts[(user, split)] == 0:
                    raise DataError(
                        f"{self.name}: user {user!r} has no pairs in split {split!r}; "
                        "drop the user or give it rows in that split"
                    )

    def summary(self) -> dict[str, Any]:
        counts = Counter((p.user_id, p.split) for p in self.pairs)
        return {
            "name": self.name,
            "n_pairs": len(self.pairs),
            "users": {u: {s: counts[(u, s)] for s in SPLITS} for u in self.users},
        }


def validate_record(row: Mapping[str, Any], source: str, index: int) -> PrefPair:
    """One raw mapping → PrefPair, or a one-line error naming `source`, the record index and the field."""
    if not isinstance(row, Mapping):
        raise DataError(f"{source}: record {index} is a {type(row).__name__}, expected an object with fields "
                        f"{', '.join(REQUIRED_FIELDS)}")
    missing = [f for f in REQUIRED_FIELDS if f not in row or row[f] is None]
    if missing:
        raise DataError(
            f"{source}: record {index} lacks field(s) {', '.join(missing)}; every record needs "
            f"{', '.join(REQUIRED_FIELDS)}"
        )
    for name in ("prompt", "chosen", "rejected"):
        if not isinstance(row[name], str):
            raise DataError(f"{source}: record {index} field {name!r} must be text, got {type(row[name]).__name__}")
    if row["split"] not in SPLITS:
        raise DataError(f"{source}: record {index} has split {row['split']!r}; use one of {', '.join(SPLITS)}")
    if not row["chosen"].strip() or not row["rejected"].strip():
        raise DataError(f"{source}: record {index} has an empty 'chosen' or 'rejected' text")
    pair_id = row.get("pair_id") or ""
    return PrefPair(
        user_id=str(row["user_id"]), prompt=row["prompt"], chosen=row["chosen"], rejected=row["rejected"],
        split=row["split"], pair_id=str(pair_id),
    )


def from_records(name: str, rows: Iterable[Mapping[str, Any]], source: str | None = None,
                 meta: dict[str, Any] | None = None) -> PrefData:
    """Validate rows in the common schema and wrap them as a PrefData."""
    pairs = [validate_record(row, source or name, i) for i, row in enumerate(rows)]
    if not pairs:
        raise DataError(f"{source or name}: no records; expected rows with {', '.join(REQUIRED_FIELDS)}")
    return PrefData(name, pairs, meta or {})


def load_schema_file(path: str | Path, name: str | None = None) -> PrefData:
    """A local .jsonl / .json file already in the common schema (the tool's own export format)."""
    from personalign.io import read_json, read_jsonl

    path = Path(path)
    if path.suffix == ".jsonl":
        rows: list[Any] = read_jsonl(path)
    elif path.suffix == ".json":
        rows = read_json(path)
        if not isinstance(rows, list):
            raise DataError(f"{path}: expected a JSON list of records")
    else:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; use .jsonl or .json in the prefbench schema")
    return from_records(name or path.stem, rows, source=str(path))


def split_of(key: str, test_frac: float, salt: str = "") -> str:
    """Deterministic train/test assignment by hashing `key` (e.g. the prompt), so all of a prompt's
    comparisons land in the same split and no prompt leaks from train into test."""
    digest = hashlib.sha1((salt + key).encode("utf-8")).hexdigest()
    return "test" if int(digest[:8], 16) / 0xFFFFFFFF < test_frac else "train"
