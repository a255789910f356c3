"""Held-out data by construction: what a run trained on, and the checks that keep evaluation data out of it.

The rule: a profile's `eval_prompts` (with their references, e.g. an author's test texts) are evaluation
data and never reach training, a retrieval pool or a judge's training data. Training-side prompts come
only from demonstrations, the optional profile field `train_prompts` and synthetic prompts
(`training_prompts`). Every trained run records fingerprints (SHA-256 of the whitespace- and
case-normalized text) of the exact prompts and texts it used in `training_data.json` beside `method.json`;
every scorer refuses a run on an item it trained on.

Public API (for methods, benchmarks and commands that score runs):

- `fingerprint(text)`: the hash used everywhere; `normalize(text)` is what it hashes.
- `training_prompts(profile)`: the prompts a method may train on (demonstrations, then `train_prompts`).
- `TrainingData`: sets of prompt and text fingerprints; `TrainingData.of(prompts, texts)`, `.union(other)`,
  `.overlap(prompts, texts)`; saved with `write_training_data(folder, data)`, read with
  `read_training_data(folder)` (None when a run recorded nothing).
- `assert_disjoint(run, eval_prompts, eval_texts=(), who=...)`: raise a one-line `LeakageError` naming
  the run and the count when `run` (a run dir, or a `TrainingData`) trained on any of them. A run dir
  without `training_data.json` is refused too: nothing proves it is clean.
- `group_split(groups, fraction, seed)`: train/held-out indices where items of one group (e.g. pairs of
  one prompt) never straddle the two sides.
- `near_duplicates_of(candidates, held_out, embedder, threshold)`: flags candidates too close (exact
  normalized match, or embedding cosine above `threshold`) to a held-out text.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from personalign.errors import PersonalignError
from personalign.io import atomic_write_json

if TYPE_CHECKING:
    from personalign.backends.embedder import Embedder
    from personalign.profiles.schema import Profile

TRAINING_DATA_FILE = "training_data.json"
_SPACE = re.compile(r"\s+")


class LeakageError(PersonalignError):
    """Evaluation data reached training, a retrieval pool or a judge's training data."""


def normalize(text: str) -> str:
    """Whitespace-collapsed, case-folded text: a re-spaced or re-cased copy is still the same item."""
    return _SPACE.sub(" ", text).strip().casefold()


def fingerprint(text: str) -> str:
    return hashlib.sha256(normalize(text).encode("utf-8")).hexdigest()


def training_prompts(profile: Profile) -> list[str]:
    """Prompts a method may train on: the demonstrations', then `train_prompts` (deduplicated, in order).

    Never an eval prompt: the profile schema refuses a profile whose eval prompts repeat one of these.
    """
    prompts = [d.prompt for d in profile.demonstrations] + list(profile.train_prompts)
    seen: set[str] = set()
    out = []
    for prompt in prompts:
        key = normalize(prompt)
        if key not in seen:
            seen.add(key)
            out.append(prompt)
    return out


@dataclass
class TrainingData:
    """Fingerprints of the prompts and texts (outputs, references, pair responses) one run trained on."""

    prompts: set[str] = field(default_factory=set)
    texts: set[str] = field(default_factory=set)

    @classmethod
    def of(cls, prompts: Iterable[str] = (), texts: Iterable[str] = ()) -> TrainingData:
        return cls({fingerprint(p) for p in prompts}, {fingerprint(t) for t in texts})

    def union(self, other: TrainingData | None) -> TrainingData:
        if other is None:
            return TrainingData(set(self.prompts), set(self.texts))
        return TrainingData(self.prompts | other.prompts, self.texts | other.texts)

    def overlap(self, prompts: Sequence[str] = (), texts: Sequence[str] = ()) -> tuple[int, int]:
        """(eval prompts, eval texts) this run trained on; a held-out text used as a training prompt counts too."""
        seen = self.prompts | self.texts
        return (sum(fingerprint(p) in seen for p in prompts), sum(fingerprint(t) in seen for t in texts))

    def to_dict(self) -> dict[str, Any]:
        return {"hash": "sha256 of whitespace-collapsed, case-folded text", "prompts": sorted(self.prompts),
                "texts": sorted(self.texts)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingData:
        return cls(set(data.get("prompts", [])), set(data.get("texts", [])))


def write_training_data(folder: str | Path, data: TrainingData) -> Path:
    return atomic_write_json(Path(folder) / TRAINING_DATA_FILE, data.to_dict())


def read_training_data(folder: str | Path) -> TrainingData | None:
    path = Path(folder) / TRAINING_DATA_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise PersonalignError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno}); retrain the run") from None
    if not isinstance(data, dict):
        raise PersonalignError(f"{path}: expected an object with 'prompts' and 'texts'; retrain the run")
    return TrainingData.from_dict(data)


def assert_disjoint(
    run: str | Path | TrainingData | None, eval_prompts: Sequence[str], eval_texts: Sequence[str] = (),
    who: str | None = None,
) -> None:
    """Refuse (one line, `LeakageError`) to score `run` on prompts or texts it trained on.

    `run` is a run dir (its `training_data.json` is read; a run dir without one is refused) or an
    in-memory `TrainingData`; None means the method used no data (nothing to check). `who` names it in
    the error, noun included (default "run DIR" / "method").
    """
    if run is None:
        return
    if isinstance(run, TrainingData):
        data, name = run, who or "method"
    else:
        data, name = read_training_data(run), who or f"run {run}"
        if data is None:
            raise LeakageError(
                f"{name}: no {TRAINING_DATA_FILE}, so nothing shows it never trained on the eval prompts; "
                "retrain it with this version of personalign"
            )
    prompts, texts = data.overlap(eval_prompts, eval_texts)
    if prompts or texts:
        parts = [f"{prompts} of the {len(eval_prompts)} eval prompts"] if prompts else []
        parts += [f"{texts} of the {len(eval_texts)} held-out texts"] if texts else []
        raise LeakageError(
            f"{name} trained on {' and '.join(parts)}; refusing to score it there. Train without them "
            "(put training prompts in demonstrations or train_prompts) or evaluate on other prompts"
        )


def group_split(groups: Sequence[str], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, held-out) indices; whole groups go to one side, about `fraction` of the groups held out.

    Items of one group (e.g. two pairs of one prompt) sharing a side is what makes held-out accuracy
    mean "on prompts never seen": split by pair, and the RM has seen every held-out prompt.
    Nothing is held out when there is a single group or `fraction` is 0.
    """
    keys = list(dict.fromkeys(normalize(g) for g in groups))
    if fraction <= 0 or len(keys) < 2:
        return list(range(len(groups))), []
    random.Random(seed).shuffle(keys)
    n_held = min(len(keys) - 1, max(1, round(len(keys) * fraction)))
    held = set(keys[:n_held])
    train_idx = [i for i, g in enumerate(groups) if normalize(g) not in held]
    held_idx = [i for i, g in enumerate(groups) if normalize(g) in held]
    return train_idx, held_idx


def near_duplicates_of(
    candidates: Sequence[str], held_out: Sequence[str], embedder: Embedder | None = None, threshold: float = 0.9,
) -> list[bool]:
    """True for each candidate equal (normalized) to a held-out text, or with embedding cosine > threshold."""
    keys = {normalize(t) for t in held_out}
    flags = [normalize(c) in keys for c in candidates]
    if embedder is not None and held_out and candidates:
        cosine = embedder.encode(list(candidates)) @ embedder.encode(list(held_out)).T  # unit-norm vectors
        flags = [f or bool(row.max() > threshold) for f, row in zip(flags, cosine, strict=True)]
    return flags
