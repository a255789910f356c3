"""Text → numbers: every `prompt + response` (and every prompt alone, for retrieval) is embedded once per
backbone (disk-cached by the Embedder), and comparisons become `PairSet`s of embedding rows that the methods
train on in seconds. Training sets are chosen-first; evaluation sets (test split, tax sets) put the chosen
response on a seeded random side with a label, so "the first slot wins" scores at chance.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from personalign.errors import DataError
from personalign.prefbench.data.tax import TaxPair
from personalign.prefbench.methods.base import Dimensions, PairSet
from personalign.prefbench.schema import PrefData

EMBED_CHUNK = 256


def pair_text(prompt: str, response: str, max_prompt_chars: int = 400) -> str:
    """What the backbone reads for one response. Long prompts keep their *end* (the last turn of a dialogue),
    so the response itself still fits the embedder's window (MiniLM reads 256 tokens)."""
    if max_prompt_chars and len(prompt) > max_prompt_chars:
        prompt = "…" + prompt[-max_prompt_chars:]
    return f"{prompt}\n\n{response}" if prompt else response


class TextTable:
    """Distinct texts in first-seen order; `ids(texts)` maps texts to rows of the embedding matrix."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}
        self.texts: list[str] = []

    def add(self, text: str) -> int:
        if text not in self.index:
            self.index[text] = len(self.texts)
            self.texts.append(text)
        return self.index[text]


Encoder = Callable[[Sequence[str]], np.ndarray]


def embed_all(encode: Encoder, texts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Embed in chunks (a progress callback gets the count done after each chunk). Texts go in length order
    so each batch pads to similar lengths (the embedder only sorts within one call)."""
    if not texts:
        raise DataError("nothing to embed: the data set has no texts")
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: np.ndarray | None = None
    for start in range(0, len(texts), EMBED_CHUNK):
        idx = order[start : start + EMBED_CHUNK]
        vecs = encode([texts[i] for i in idx])
        if out is None:
            out = np.zeros((len(texts), vecs.shape[1]), dtype=np.float32)
        out[idx] = vecs
        if progress:
            progress(min(start + EMBED_CHUNK, len(texts)))
    assert out is not None
    return out


@dataclass
class Featurized:
    """A data set as numbers: one PairSet per split, users indexed in `users` order, and the data set's
    preference dimensions when it declares them."""

    users: list[str]
    splits: dict[str, PairSet]
    n_texts: int
    dimensions: Dimensions | None = None


def prompt_text(prompt: str, max_prompt_chars: int = 400) -> str:
    """What the backbone reads for a prompt alone (retrieval by prompt): its end, like `pair_text`."""
    return pair_text("", prompt[-max_prompt_chars:] if max_prompt_chars else prompt, 0)


def _pairset(rows: list[tuple[int, int, int, int]], emb: np.ndarray, texts: Sequence[str]) -> PairSet:
    arr = np.array(rows, dtype=np.int64)
    return PairSet(emb[arr[:, 0]], emb[arr[:, 1]], arr[:, 2], arr[:, 0], arr[:, 1], prompt=emb[arr[:, 3]],
                   texts=texts, prompt_idx=arr[:, 3])


def featurize(data: PrefData, encode: Encoder, users: Sequence[str] | None = None, max_prompt_chars: int = 400,
              progress: Callable[[int, int], None] | None = None, seed: int = 0) -> Featurized:
    """Embed every distinct prompt+response and prompt of `data`; build the train PairSet (chosen first),
    the test PairSet (chosen on a random side, `seed`) and the dimensions' PairSet."""
    users = list(users or data.users)
    uid = {u: i for i, u in enumerate(users)}
    table = TextTable()
    rows: dict[str, list[tuple[int, int, int, int]]] = {}

    def row(prompt: str, chosen: str, rejected: str, owner: int) -> tuple[int, int, int, int]:
        return (table.add(pair_text(prompt, chosen, max_prompt_chars)),
                table.add(pair_text(prompt, rejected, max_prompt_chars)), owner,
                table.add(prompt_text(prompt, max_prompt_chars)))

    for p in data.pairs:
        if p.user_id in uid:
            rows.setdefault(p.split, []).append(row(p.prompt, p.chosen, p.rejected, uid[p.user_id]))
    spec = data.dimensions
    dim_rows: list[tuple[int, int, int, int]] = []
    if spec is not None:
        dim_id = {n: i for i, n in enumerate(spec.names)}
        source = ([p for p in data.pairs if p.split == "train" and p.user_id in dim_id] if spec.from_users
                  else spec.pairs)
        dim_rows = [row(p.prompt, p.chosen, p.rejected, dim_id[p.user_id]) for p in source]
    total = len(table.texts)
    emb = embed_all(encode, table.texts, (lambda done: progress(done, total)) if progress else None)
    splits = {}
    for n, (split, triples) in enumerate(sorted(rows.items())):
        pairs = _pairset(triples, emb, table.texts)
        splits[split] = pairs if split == "train" else pairs.random_sides(seed * 101 + n)
    dims = None
    if spec is not None and dim_rows:
        weights = np.array([[spec.weights.get(u, {}).get(n, 0.0) for n in spec.names] for u in users])
        source_user = [uid.get(n) if spec.source_user(n) else None for n in spec.names]
        dims = Dimensions(list(spec.names), _pairset(dim_rows, emb, table.texts), weights, source_user)
    return Featurized(users, splits, total, dims)


@dataclass
class TaxFeatures:
    """Tax pairs as a PairSet (user 0, chosen on a random side; re-attributed per user when scored), their
    categories, and the untrained backbone's margins for chosen-first rows (cos(prompt, chosen) −
    cos(prompt, rejected), responses embedded alone)."""

    pairs: PairSet
    categories: np.ndarray
    untrained_margins: np.ndarray


def featurize_general(pairs: Sequence[TaxPair], encode: Encoder, max_prompt_chars: int = 400) -> PairSet:
    """General preference pairs (the shared component's signal) as a chosen-first PairSet of user 0."""
    if not pairs:
        raise DataError("no general preference pairs loaded; check the data root or disable them (general=false)")
    table = TextTable()
    rows = [(table.add(pair_text(p.prompt, p.chosen, max_prompt_chars)),
             table.add(pair_text(p.prompt, p.rejected, max_prompt_chars)), 0,
             table.add(prompt_text(p.prompt, max_prompt_chars))) for p in pairs]
    return _pairset(rows, embed_all(encode, table.texts), table.texts)


def featurize_tax(tax: Sequence[TaxPair], encode: Encoder, max_prompt_chars: int = 400,
                  progress: Callable[[int, int], None] | None = None, seed: int = 0) -> TaxFeatures:
    if not tax:
        raise DataError("no tax pairs loaded; check the data root or disable the tax with --no-tax")
    table = TextTable()
    idx = []
    for p in tax:
        idx.append((
            table.add(pair_text(p.prompt, p.chosen, max_prompt_chars)),
            table.add(pair_text(p.prompt, p.rejected, max_prompt_chars)),
            # The untrained baseline reads prompt and response separately: a response that stays on the
            # prompt's topic scores higher (the backbone's only notion of a good answer).
            table.add(prompt_text(p.prompt, max_prompt_chars)),
            table.add(pair_text("", p.chosen, 0)),
            table.add(pair_text("", p.rejected, 0)),
        ))
    total = len(table.texts)
    emb = embed_all(encode, table.texts, (lambda done: progress(done, total)) if progress else None)
    arr = np.array(idx, dtype=np.int64)
    prompt, chosen_only, rejected_only = emb[arr[:, 2]], emb[arr[:, 3]], emb[arr[:, 4]]
    untrained = (prompt * chosen_only).sum(-1) - (prompt * rejected_only).sum(-1)
    pairs = PairSet(emb[arr[:, 0]], emb[arr[:, 1]], np.zeros(len(tax), dtype=np.int64), arr[:, 0], arr[:, 1],
                    prompt=prompt, texts=table.texts, prompt_idx=arr[:, 2]).random_sides(seed + 7)
    return TaxFeatures(pairs, np.array([p.category for p in tax]), untrained.astype(np.float32))

