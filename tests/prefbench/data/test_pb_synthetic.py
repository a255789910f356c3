"""Synthetic users: attributes measured from text by hand, labels follow the weights, minorities disagree."""

from __future__ import annotations

import math

import numpy as np
import pytest

from personalign.errors import DataError
from personalign.prefbench.characterize import characterize
from personalign.prefbench.data.synthetic import ATTRIBUTES, make_synthetic, measure_attributes


def test_attributes_by_hand() -> None:
    text = "Yeah, just try it!\n- One should rest.\n- Great fun, not boring?"
    attrs = dict(zip(ATTRIBUTES, measure_attributes(text), strict=True))
    words = ["Yeah", "just", "try", "it", "One", "should", "rest", "Great", "fun", "not", "boring"]
    assert attrs["length"] == pytest.approx(math.log1p(len(words)))
    assert attrs["formality"] == 1 - 2  # "one should" vs "yeah", "just "
    assert attrs["listness"] == pytest.approx(2 / 3)
    assert attrs["sentiment"] == 2 - 1  # great, fun vs boring
    assert attrs["enthusiasm"] == 1
    assert attrs["asks_back"] == 1.0


def test_deterministic_and_noise_free_labels_follow_the_weights() -> None:
    a = make_synthetic(n_users=3, n_prompts=12, label_noise=0.0, repeat_frac=0.0, seed=3)
    b = make_synthetic(n_users=3, n_prompts=12, label_noise=0.0, repeat_frac=0.0, seed=3)
    assert [p.to_dict() for p in a.pairs] == [p.to_dict() for p in b.pairs]
    # Recompute each user's utility from the measured attributes (z-scored over all responses).
    texts = sorted({t for p in a.pairs for t in (p.chosen, p.rejected)})
    raw = np.array([measure_attributes(t) for t in texts])
    z = (raw - raw.mean(0)) / np.where(raw.std(0) > 0, raw.std(0), 1)
    util = {u: dict(zip(texts, z @ np.array(w), strict=True)) for u, w in a.meta["weights"].items()}
    assert all(util[p.user_id][p.chosen] >= util[p.user_id][p.rejected] for p in a.pairs)


def test_minority_users_are_found_and_noise_is_known() -> None:
    data = make_synthetic(n_users=8, n_prompts=60, minority_frac=0.25, label_noise=0.1, repeat_frac=0.5, seed=0)
    assert data.meta["minority_users"] == ["user_6", "user_7"]
    report = characterize(data)
    assert set(report["minority_users"]) == {"user_6", "user_7"}
    # Repeated labels disagree about 2·0.1·0.9 = 18% of the time → consistency near 0.91.
    assert 0.85 < report["consistency"] < 0.97
    assert report["per_user"]["user_6"]["room"] > report["per_user"]["user_0"]["room"]


def test_bad_arguments() -> None:
    with pytest.raises(DataError, match="n_users must be at least 2"):
        make_synthetic(n_users=1)
    with pytest.raises(DataError, match="label_noise"):
        make_synthetic(label_noise=0.6)


def test_attributes_are_declared_dimensions_labeled_on_train_comparisons_only() -> None:
    from personalign.prefbench.data.synthetic import measure_attributes

    data = make_synthetic(n_users=4, n_prompts=30, seed=1)
    spec = data.dimensions
    assert spec is not None and len(spec.names) == 12 and not spec.from_users
    weights = data.meta["weights"]
    for user, declared in spec.weights.items():
        assert sum(declared.values()) == pytest.approx(1.0)
        total = sum(map(abs, weights[user]))
        for k, w in enumerate(weights[user]):
            # The declared pole follows the weight's sign, with weight |w| / Σ|w|.
            assert declared[f"{ATTRIBUTES[k]}{'+' if w >= 0 else '-'}"] == pytest.approx(abs(w) / total, abs=1e-3)
    train_prompts = {p.prompt for p in data.pairs if p.split == "train"}
    assert spec.pairs and all(p.prompt in train_prompts and p.split == "train" for p in spec.pairs)
    longer = [p for p in spec.pairs if p.user_id == "length+"]
    assert all(measure_attributes(p.chosen)[0] > measure_attributes(p.rejected)[0] for p in longer)
