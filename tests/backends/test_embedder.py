"""The shared Embedder: unit-norm vectors, meaningful similarity, and a disk cache."""

from __future__ import annotations

import numpy as np

from personalign.backends.embedder import Embedder


def test_embeddings_are_unit_norm_semantic_and_cached(tmp_path):
    embedder = Embedder("minilm", cache_root=tmp_path)
    texts = ["I would love to schedule a meeting.", "Can we set up a call?", "The volcano erupted violently."]
    vectors = embedder.encode(texts)
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]
    assert embedder.cache_misses == 3
    fresh = Embedder("minilm", cache_root=tmp_path)  # a new process would see the same cache
    fresh._model = embedder.model
    again = fresh.encode([texts[2], texts[0], texts[0]])
    assert fresh.cache_hits == 3 and fresh.cache_misses == 0
    assert np.allclose(again[0], vectors[2]) and np.allclose(again[1], vectors[0])
    assert embedder.encode([]).shape == (0, 384)


def test_bf16_and_fp32_agree_but_never_share_a_cache(tmp_path):
    texts = ["Warmly, Maya", "Please find the report attached.", "The volcano erupted violently."]
    fp32, bf16 = (Embedder("minilm", cache_root=tmp_path, dtype=d) for d in ("fp32", "bf16"))
    a, b = fp32.encode(texts), bf16.encode(texts)
    assert bf16.cache_misses == 3  # fp32 vectors already cached for the same texts were not reused
    assert b.dtype == np.float32 and np.allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    assert (a * b).sum(axis=1).min() > 0.99 and not np.array_equal(a, b)
    assert len(list(tmp_path.glob("*.sqlite"))) == 2
