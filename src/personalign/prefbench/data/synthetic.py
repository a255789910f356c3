"""Synthetic users whose preferences are known: weighted mixtures of interpretable text attributes.

Responses are composed from templates with random style knobs (length, formality, list vs prose,
sentiment, enthusiasm, asking back). Each response's attributes are then *measured from its text* by the
deterministic functions below, z-scored over the corpus, and user `u` prefers the response with the higher
`w_u · attributes` (a flipped label with probability `label_noise`). Minority users flip the sign of some
of the majority's weights, so both the disagreement and the best reachable accuracy (1 − noise) are known.

The attributes are also the preference dimensions (Personalized Soups): each has two poles ("length+":
longer wins, "length-": shorter wins), labeled on train-split comparisons by the attribute alone, and a user
declares weight |w_k| on the pole of w_k's sign (normalized to sum 1).
"""

from __future__ import annotations

import math
import re
from itertools import combinations
from typing import Any

import numpy as np

from personalign.errors import DataError
from personalign.prefbench.schema import DimensionSpec, PrefData, PrefPair, comparison_id, split_of

ATTRIBUTES = ("length", "formality", "listness", "sentiment", "enthusiasm", "asks_back")

TOPICS = (
    "saving money", "learning Python", "sleeping better", "training a puppy", "running a first marathon",
    "growing tomatoes", "public speaking", "learning Spanish", "cooking rice", "writing a cover letter",
    "keeping houseplants alive", "planning a road trip", "reducing screen time", "starting to meditate",
    "buying a used car", "studying for exams", "painting with watercolors", "fixing a leaky faucet",
    "making sourdough bread", "negotiating a raise", "organizing a small closet", "learning chess",
    "choosing a laptop", "brewing coffee at home", "staying focused while working from home",
    "hosting a dinner party", "learning to swim", "writing a short story", "cleaning a cast iron pan",
    "picking running shoes", "starting a vegetable garden", "improving handwriting", "reading more books",
    "camping for the first time", "making new friends in a new city", "learning the guitar",
    "preparing for a job interview", "decluttering a kitchen", "baking chocolate chip cookies",
    "photographing the night sky",
)
PROMPT_TEMPLATES = (
    "How can I get better at {t}?", "What should I know about {t}?", "Any tips for {t}?",
    "I am new to {t}. Where do I start?", "What is the best way to approach {t}?", "Give me advice on {t}.",
)
ADVICE = (
    "start small with {t}", "set a fixed weekly schedule for {t}", "track your progress in {t}",
    "ask someone experienced in {t} for feedback", "read one well reviewed guide on {t}",
    "practice {t} for a few minutes every day", "avoid the most common beginner mistakes in {t}",
    "compare a few options before committing to {t}", "write down what worked after each session of {t}",
    "budget a little time and money for {t}", "watch how experts handle {t}", "rest when {t} gets tiring",
)
FORMAL_FRAMES = ("It is advisable to {a}.", "One should consider whether to {a}.",
                 "Furthermore, it is recommended to {a}.", "Consequently, it would be prudent to {a}.")
CASUAL_FRAMES = ("Just {a}.", "Honestly, you gotta {a}.", "Try to {a}, no big deal.", "Yeah, {a} and see.")
POSITIVE = ("This is a wonderful and rewarding thing to work on.", "You will love the great progress you make.",
            "It is a fun, happy and exciting journey.")
NEGATIVE = ("Frankly, this is hard and often frustrating.", "Many people fail and feel bad about it.",
            "It can be a slow, boring and painful process.")
ASK_BACK = ("What have you tried so far?", "Would you share more details about your situation?",
            "Which part worries you the most?")

FORMAL_MARKERS = ("advisable", "one should", "furthermore", "recommended", "consequently", "prudent",
                  "would you share")
CASUAL_MARKERS = ("just ", "gotta", "no big deal", "yeah", "honestly", "kinda")
POSITIVE_WORDS = ("wonderful", "rewarding", "love", "great", "fun", "happy", "exciting")
NEGATIVE_WORDS = ("hard", "frustrating", "fail", "bad", "slow", "boring", "painful")


def measure_attributes(text: str) -> np.ndarray:
    """The raw attribute vector of `text` (before z-scoring), in `ATTRIBUTES` order; pure text statistics."""
    lower = text.lower()
    words = re.findall(r"[a-zA-Z']+", text)
    lines = [ln for ln in text.splitlines() if ln.strip()]
    list_lines = sum(1 for ln in lines if re.match(r"\s*(-|\*|\d+\.)\s", ln))
    return np.array([
        math.log1p(len(words)),
        sum(lower.count(m) for m in FORMAL_MARKERS) - sum(lower.count(m) for m in CASUAL_MARKERS),
        list_lines / max(len(lines), 1),
        sum(lower.count(w) for w in POSITIVE_WORDS) - sum(lower.count(w) for w in NEGATIVE_WORDS),
        text.count("!"),
        1.0 if text.rstrip().endswith("?") else 0.0,
    ], dtype=np.float64)


def compose_response(topic: str, rng: np.random.Generator) -> str:
    """One response to a question on `topic`, with randomly drawn style knobs."""
    n_points = int(rng.integers(1, 7))
    formal = bool(rng.random() < 0.5)
    as_list = bool(rng.random() < 0.5)
    mood = int(rng.integers(-1, 2))
    exclaim = bool(rng.random() < 0.3)
    ask_back = bool(rng.random() < 0.3)
    frames = FORMAL_FRAMES if formal else CASUAL_FRAMES
    advice = rng.choice(len(ADVICE), size=n_points, replace=False)
    points = [str(frames[int(rng.integers(len(frames)))]).format(a=ADVICE[i].format(t=topic)) for i in advice]
    if exclaim:
        points = [p[:-1] + "!" for p in points]
    parts: list[str] = []
    if mood > 0:
        parts.append(str(POSITIVE[int(rng.integers(len(POSITIVE)))]))
    elif mood < 0:
        parts.append(str(NEGATIVE[int(rng.integers(len(NEGATIVE)))]))
    body = "\n".join(f"- {p}" for p in points) if as_list else " ".join(points)
    parts.append(body)
    if ask_back:
        parts.append(str(ASK_BACK[int(rng.integers(len(ASK_BACK)))]))
    return "\n".join(parts) if as_list else " ".join(parts)


def user_weights(n_users: int, minority_frac: float, rng: np.random.Generator,
                 spread: float = 0.3) -> tuple[np.ndarray, list[bool]]:
    """Majority users share one taste (plus a little individual spread); minority users flip the sign of all
    but one of the majority's attribute weights, so they disagree with the majority on most comparisons
    while still differing from each other."""
    m = len(ATTRIBUTES)
    base = np.abs(rng.normal(size=m)) + 0.3
    n_minority = round(n_users * minority_frac)
    # Minority users come last so ids read naturally (user_0 is always in the majority).
    minority = [u >= n_users - n_minority for u in range(n_users)]
    weights = np.zeros((n_users, m))
    for u in range(n_users):
        w = base * (1.0 + spread * rng.normal(size=m))
        if minority[u]:
            keep = int(rng.integers(m))
            w[np.arange(m) != keep] *= -1.0
        weights[u] = w
    return weights, minority


def make_synthetic(
    n_users: int = 8,
    n_prompts: int = 240,
    responses_per_prompt: int = 4,
    minority_frac: float = 0.25,
    label_noise: float = 0.05,
    repeat_frac: float = 0.1,
    test_frac: float = 0.2,
    seed: int = 0,
) -> PrefData:
    """Generate the synthetic benchmark; same arguments → the same texts, users and labels."""
    if n_users < 2:
        raise DataError("synthetic: n_users must be at least 2 (personalization needs several users)")
    if responses_per_prompt < 2:
        raise DataError("synthetic: responses_per_prompt must be at least 2 to form comparisons")
    if not 0.0 <= label_noise < 0.5:
        raise DataError("synthetic: label_noise must be in [0, 0.5)")
    if not 0.0 <= minority_frac < 1.0:
        raise DataError("synthetic: minority_frac must be in [0, 1)")
    rng = np.random.default_rng(seed)
    prompts: list[str] = []
    responses: list[list[str]] = []
    for i in range(n_prompts):
        topic = TOPICS[i % len(TOPICS)]
        template = PROMPT_TEMPLATES[(i // len(TOPICS)) % len(PROMPT_TEMPLATES)]
        prompts.append(template.format(t=topic))
        texts: list[str] = []
        while len(texts) < responses_per_prompt:
            text = compose_response(topic, rng)
            if text not in texts:
                texts.append(text)
        responses.append(texts)
    raw = np.array([measure_attributes(t) for texts in responses for t in texts])
    std = raw.std(axis=0)
    attrs = (raw - raw.mean(axis=0)) / np.where(std > 0, std, 1.0)
    attrs = attrs.reshape(n_prompts, responses_per_prompt, len(ATTRIBUTES))
    weights, minority = user_weights(n_users, minority_frac, rng)
    users = [f"user_{u}" for u in range(n_users)]
    pairs: list[PrefPair] = []
    dim_pairs: list[PrefPair] = []
    for p, prompt in enumerate(prompts):
        split = split_of(prompt, test_frac, salt=f"synthetic{seed}")
        for i, j in combinations(range(responses_per_prompt), 2):
            a, b = responses[p][i], responses[p][j]
            pid = comparison_id(prompt, a, b)
            if split == "train":
                for k, attr in enumerate(ATTRIBUTES):
                    gap = attrs[p, i, k] - attrs[p, j, k]
                    if abs(gap) > 1e-9:
                        high, low = (a, b) if gap > 0 else (b, a)
                        dim_pairs.append(PrefPair(f"{attr}+", prompt, high, low, split, pid))
                        dim_pairs.append(PrefPair(f"{attr}-", prompt, low, high, split, pid))
            repeats = 2 if rng.random() < repeat_frac else 1
            for u, user in enumerate(users):
                utility_gap = float(weights[u] @ (attrs[p, i] - attrs[p, j]))
                for _ in range(repeats):
                    prefers_a = utility_gap >= 0
                    if rng.random() < label_noise:
                        prefers_a = not prefers_a
                    chosen, rejected = (a, b) if prefers_a else (b, a)
                    pairs.append(PrefPair(user, prompt, chosen, rejected, split, pid))
    meta: dict[str, Any] = {
        "attributes": list(ATTRIBUTES),
        "weights": {user: [round(float(x), 4) for x in weights[u]] for u, user in enumerate(users)},
        "minority_users": [user for u, user in enumerate(users) if minority[u]],
        "label_noise": label_noise,
        "expected_oracle_acc": 1.0 - label_noise,
        "seed": seed,
    }
    declared = {}
    for u, user in enumerate(users):
        total = float(np.abs(weights[u]).sum())
        declared[user] = {f"{attr}{'+' if w >= 0 else '-'}": float(abs(w)) / total
                          for attr, w in zip(ATTRIBUTES, weights[u], strict=True)}
    names = [f"{attr}{pole}" for attr in ATTRIBUTES for pole in "+-"]
    return PrefData("synthetic", pairs, meta, DimensionSpec(names, declared, dim_pairs))
