"""Vanilla's majority-vote aggregation on a hand-made set of comparisons."""

from __future__ import annotations

import numpy as np
import pytest

from personalign.errors import PersonalignError
from personalign.prefbench.methods.base import PairSet
from personalign.prefbench.methods.vanilla import majority_pairs


def pairs(rows: list[tuple[int, int, int]]) -> PairSet:
    x = np.eye(6, dtype=np.float32)
    a = np.array([r[0] for r in rows])
    b = np.array([r[1] for r in rows])
    return PairSet(x[a], x[b], [r[2] for r in rows], a, b)


def test_majority_by_hand() -> None:
    data = pairs([
        (0, 1, 0), (0, 1, 1), (1, 0, 2),   # {0,1}: users 0, 1 say 0; user 2 says 1
        (2, 3, 0), (3, 2, 1),              # {2,3}: one vote each way → tie → dropped
        (5, 4, 0),                          # {4,5}: a single vote → kept, 5 first
        (1, 0, 3), (1, 0, 3), (0, 1, 4),    # {0,1} again: user 3 says 1 twice (one user, one vote), user 4 says 0
    ])
    # {0,1}: users 0, 1, 4 vs users 2, 3 → 0 wins three to two, whatever the row order.
    out = majority_pairs(data)
    got = sorted(zip(out.a_idx.tolist(), out.b_idx.tolist(), strict=True))
    assert got == [(0, 1), (5, 4)]
    assert np.allclose(out.a[out.a_idx == 5], np.eye(6)[5])


def test_majority_needs_text_ids_and_a_non_tie() -> None:
    x = np.eye(2, dtype=np.float32)
    with pytest.raises(PersonalignError, match="needs text ids"):
        majority_pairs(PairSet(x, x[::-1], [0, 1]))
    with pytest.raises(PersonalignError, match="every comparison is a tie"):
        majority_pairs(pairs([(0, 1, 0), (1, 0, 1)]))
