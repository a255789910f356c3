"""Every method on two users with opposed tastes: personalized ones learn both, vanilla cannot."""

from __future__ import annotations

import numpy as np
import pytest

from personalign.errors import PersonalignError
from personalign.prefbench.config import ALL_METHODS
from personalign.prefbench.methods import make_method
from personalign.prefbench.methods.base import PairSet, TrainConfig, accuracy

# Small but sufficient settings: the meta-learners need fewer steps on an 8-d task.
OPTIONS = {
    "vpl": {"steps": 300, "episodes": 8, "context_max": 32, "targets": 16},
    "gpo": {"steps": 200, "episodes": 8, "context_max": 32, "targets": 16},
    "rag": {"k": 30, "retrieval": "difference"},
    "soups": {"init_epochs": 2, "weight_steps": 80},
}
# The eight methods of the study; `lora` (backbone fine-tuning) has its own test on a tiny backbone.
PERSONALIZED = [m for m in ALL_METHODS if m != "vanilla"]


def user_accs(method_name: str, train: PairSet, test: PairSet, cfg: TrainConfig) -> tuple[object, list[float]]:
    method = make_method(method_name, OPTIONS.get(method_name), cfg, seed=0).fit(train, 2)
    margins = method.margins(test)
    return method, [accuracy(margins[test.users == u]) for u in (0, 1)]


@pytest.mark.parametrize("name", PERSONALIZED)
def test_personalized_methods_learn_both_opposed_users(name, opposed, fast_train) -> None:
    train, test, _ = opposed
    method, accs = user_accs(name, train, test, fast_train)
    assert min(accs) > 0.9, accs
    # A new user with user 1's taste, from 60 of its pairs, is served better than chance.
    new = method.add_user(train.for_user(1).subset(np.arange(60)))
    assert new == 2
    assert accuracy(method.margins(test.for_user(1).as_user(new))) > 0.75


def test_vanilla_stays_near_chance_on_opposed_users(opposed, fast_train) -> None:
    train, test, _ = opposed
    _, accs = user_accs("vanilla", train, test, fast_train)
    assert abs(np.mean(accs) - 0.5) < 0.06
    # Whatever it learned helps one user exactly as much as it hurts the other.
    assert abs(accs[0] + accs[1] - 1.0) < 0.12


@pytest.mark.parametrize("name", ALL_METHODS)
def test_unknown_user_id_is_a_clear_error(name, opposed, fast_train) -> None:
    train, test, _ = opposed
    method = make_method(name, OPTIONS.get(name), fast_train.model_copy(update={"min_steps": 1, "epochs": 1}))
    if name in ("vpl", "gpo"):
        method.options = method.Options(**{**(OPTIONS.get(name) or {}), "steps": 2})
    method.fit(train, 2)
    with pytest.raises(PersonalignError, match=r"unknown user id\(s\) \[5\].*add_user"):
        method.margins(test.as_user(5))


def test_fit_rejects_empty_and_missing_users(opposed, fast_train) -> None:
    train, _, _ = opposed
    method = make_method("individual", None, fast_train)
    with pytest.raises(PersonalignError, match="empty training set"):
        method.fit(train.subset([]), 2)
    with pytest.raises(PersonalignError, match=r"users \[2\] have no training pairs"):
        method.fit(train, 3)
    with pytest.raises(PersonalignError, match="call fit"):
        make_method("rag").margins(train)


def test_make_method_rejects_unknown_names() -> None:
    with pytest.raises(PersonalignError, match="unknown method 'dpo'"):
        make_method("dpo")
