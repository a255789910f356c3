"""Authorship (style) judge: P(target author | text) from a calibrated classifier, with its own validity.

Features: MiniLM sentence embeddings (what is said and how, semantically) plus character 2–4-gram
TF-IDF (spelling, punctuation, function words: classic stylometry). Model: scikit-learn logistic
regression, probabilities calibrated with `CalibratedClassifierCV` (sigmoid, k-fold; the folds refit the
TF-IDF too, so calibration never sees a text its model was trained on). Classes are weighted to a
50/50 prior, so 0.5 means "as likely the author as not". Validity: ROC-AUC on held-out real texts of
the author vs other authors that the judge never trained on; it is reported every time the judge is used.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from personalign.backends.embedder import Embedder, get_embedder
from personalign.errors import PersonalignError
from personalign.splits import TrainingData, assert_disjoint


@dataclass(frozen=True)
class JudgeValidity:
    """How far the judge can be trusted: AUC on texts it never trained on, and how many there were."""

    auc: float
    n_pos: int
    n_neg: int
    n_train_pos: int
    n_train_neg: int

    def line(self, who: str = "authorship judge") -> str:
        verdict = "ok" if self.auc >= 0.8 else ("weak" if self.auc >= 0.65 else "NOT VALID")
        return (
            f"{who}: held-out ROC-AUC {self.auc:.3f} on {self.n_pos} author vs {self.n_neg} other texts "
            f"(trained on {self.n_train_pos} vs {self.n_train_neg}; none shared) [{verdict}]"
        )

    def as_dict(self) -> dict[str, float | int]:
        return {"auc": self.auc, "n_pos": self.n_pos, "n_neg": self.n_neg,
                "n_train_pos": self.n_train_pos, "n_train_neg": self.n_train_neg}


class AuthorshipJudge:
    """One target author vs everyone else. `fit`, then `score(texts)` → P(author | text) in [0, 1]."""

    def __init__(
        self, embedder: Embedder | str | None = "minilm", char_ngrams: tuple[int, int] = (2, 4),
        c: float = 1.0, folds: int = 3, seed: int = 0, ensemble: bool = False, embedding_weight: float = 0.3,
    ):
        self._embedder_spec = embedder
        self.char_ngrams = char_ngrams
        self.c = c
        self.folds = folds
        self.seed = seed
        # ensemble=False: calibrate on out-of-fold predictions, then keep one refit model (scoring runs
        # one pipeline instead of `folds`; char n-grams of long texts dominate the cost).
        self.ensemble = ensemble
        # Embeddings carry topic; on CMCC (every author writes on the same topics) full weight halves the
        # held-out AUC, so they enter down-weighted next to the stylometric char n-grams (BENCHMARKS.md).
        self.embedding_weight = embedding_weight
        self.model = None
        self.validity: JudgeValidity | None = None
        self.training_data = TrainingData()

    @property
    def embedder(self) -> Embedder | None:
        spec = self._embedder_spec
        if spec is None or isinstance(spec, Embedder):
            return spec
        return get_embedder(spec)

    def _pipeline(self):
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import FeatureUnion, Pipeline
        from sklearn.preprocessing import FunctionTransformer

        parts = [("chars", TfidfVectorizer(analyzer="char_wb", ngram_range=self.char_ngrams, sublinear_tf=True,
                                            min_df=2, max_features=50_000))]
        if self.embedder is not None:
            embedder = self.embedder
            parts.append(("minilm", FunctionTransformer(lambda texts: embedder.encode(list(texts)))))
        return Pipeline([
            ("features", FeatureUnion(parts, transformer_weights={"minilm": self.embedding_weight} if len(parts) > 1
                                      else None)),
            ("lr", LogisticRegression(C=self.c, class_weight="balanced", max_iter=2000)),
        ])

    def fit(self, author_texts: Sequence[str], other_texts: Sequence[str]) -> AuthorshipJudge:
        from sklearn.calibration import CalibratedClassifierCV

        folds = min(self.folds, len(author_texts), len(other_texts))
        if folds < 2:
            raise PersonalignError(
                f"authorship judge: needs at least 2 texts of the author and 2 of others "
                f"(got {len(author_texts)} and {len(other_texts)}); add more texts to the pools"
            )
        texts = [*author_texts, *other_texts]
        y = np.array([1] * len(author_texts) + [0] * len(other_texts))
        # Balanced sample weights make the calibrated probability mean P(author) under a 50/50 prior.
        weights = np.where(y == 1, len(y) / (2 * y.sum()), len(y) / (2 * (len(y) - y.sum())))
        self.model = CalibratedClassifierCV(self._pipeline(), method="sigmoid", cv=folds, ensemble=self.ensemble)
        with warnings.catch_warnings():
            # The pipeline takes no sample_weight (its LR is class-balanced already); calibration uses them.
            warnings.simplefilter("ignore", UserWarning)
            self.model.fit(texts, y, sample_weight=weights)
        self.training_data = TrainingData.of(texts=texts)
        self._n_train = (len(author_texts), len(other_texts))
        return self

    def score(self, texts: Sequence[str]) -> list[float]:
        """P(author | text) for each text (calibrated, 50/50 prior)."""
        if self.model is None:
            raise RuntimeError("call fit() before score()")
        if not texts:
            return []
        return [float(p) for p in self.model.predict_proba(list(texts))[:, 1]]

    def evaluate(self, author_heldout: Sequence[str], other_heldout: Sequence[str]) -> JudgeValidity:
        """ROC-AUC on held-out texts; refuses any text the judge was trained on (that would inflate it)."""
        from sklearn.metrics import roc_auc_score

        assert_disjoint(self.training_data, (), [*author_heldout, *other_heldout], who="authorship judge (validity)")
        if not author_heldout or not other_heldout:
            raise PersonalignError("authorship judge: validity needs held-out texts of the author and of others")
        y = [1] * len(author_heldout) + [0] * len(other_heldout)
        auc = float(roc_auc_score(y, self.score([*author_heldout, *other_heldout])))
        self.validity = JudgeValidity(auc, len(author_heldout), len(other_heldout), *self._n_train)
        return self.validity


def fit_author_judge(
    author: int, train: dict[int, list[str]], heldout: dict[int, list[str]],
    max_negatives: int = 400, seed: int = 0, embedder: Embedder | str | None = "minilm",
    embedding_weight: float = 0.3,
) -> AuthorshipJudge:
    """Fit the judge for `author` on the train pools (all other authors as negatives) and measure validity."""
    rng = np.random.default_rng(seed + author)
    others = [t for a, texts in train.items() if a != author for t in texts]
    if len(others) > max_negatives:
        others = [others[i] for i in sorted(rng.choice(len(others), max_negatives, replace=False))]
    judge = AuthorshipJudge(embedder=embedder, seed=seed, embedding_weight=embedding_weight).fit(train[author], others)
    other_heldout = [t for a, texts in heldout.items() if a != author for t in texts]
    judge.evaluate(heldout[author], other_heldout)
    return judge
