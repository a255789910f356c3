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


def test_vectors_do_not_depend_on_batch_mates(tmp_path):
    # A text's vector must not change with the texts it happens to be batched with, or a benchmark's numbers
    # would depend on what the cache saw before. bf16 is the sensitive case: padding moved it by ~1e-3, so
    # batches are never padded; fp32 keeps ~1e-7 of kernel-to-kernel rounding between batch sizes.
    short = "Thanks for the update."
    long = "A much longer message about schedules, deadlines and the many reasons for the delay. " * 6
    for dtype, tolerance in (("bf16", 0.0), ("fp32", 1e-6)):
        embedder = Embedder("minilm", cache=False, dtype=dtype)
        alone = embedder.encode([short])[0]
        batched = embedder.encode([long, short, long, "Another short one here."])[1]
        assert np.abs(alone - batched).max() <= tolerance, dtype


def test_shared_embedder_follows_the_cache_folder(tmp_path, monkeypatch):
    from personalign.backends.embedder import get_embedder

    monkeypatch.setenv("PERSONALIGN_CACHE", str(tmp_path / "a"))
    first = get_embedder()
    assert get_embedder() is first  # loaded once per process
    monkeypatch.setenv("PERSONALIGN_CACHE", str(tmp_path / "b"))
    assert get_embedder() is not first and get_embedder("minilm", "fp32") is not get_embedder("minilm", "bf16")
