"""Dataset characterization: how much users disagree, how consistent each is, who is in the minority, and
how much accuracy personalization can add over one shared majority-vote model.

Definitions (all over comparisons = unordered response pairs under one prompt, i.e. `pair_id`):

- A user's *label* on a comparison is the sign of the sum of its votes (+1 first text, −1 second; 0 = tie
  among its own repeated votes). The majority a user is compared with is *leave-one-out*: the sign of the
  sum of the *other* users' labels (one vote per user), so a user never counts inside its own majority.
- inter-personal disagreement: share of comparisons labeled by ≥ 2 users on which user labels differ.
- intra-personal consistency: over (user, comparison) labeled ≥ 2 times by that user, the mean share of its
  votes that agree with its more frequent answer (1 = always the same, 0.5 = a coin flip; None when no user
  labeled anything twice).
- agreement of a user with the majority: over its comparisons shared with other users, 1 if its label equals
  the leave-one-out majority, 0 if it differs, 0.5 if either is a tie. Minority users: agreement < 0.5.
- room for personalization: per user, oracle accuracy (every vote predicted by the user's own label) minus
  majority-vote accuracy (every vote predicted by the leave-one-out majority; 0.5 where no other user
  labeled the comparison); ties score 0.5.

The bench reads minority users from the *train* split (what a method may know) and the majority-vote and
oracle baselines from the *test* split (where the methods are scored): `characterize_splits`.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from personalign.errors import DataError
from personalign.prefbench.schema import PrefData, PrefPair


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


def _match(label: int, target: int) -> float:
    return 0.5 if label == 0 or target == 0 else float(label == target)


def characterize(data: PrefData, split: str = "all") -> dict[str, Any]:
    """All characterization metrics of `data` (restricted to `split` unless 'all') as a JSON-ready dict."""
    pairs: list[PrefPair] = data.pairs if split == "all" else data.split(split)
    if not pairs:
        raise DataError(f"{data.name}: split {split!r} is empty; use train, test or all")
    # votes[c][u] = list of ±1 votes, +1 meaning the lexicographically smaller text won.
    votes: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for p in pairs:
        votes[p.comparison][p.user_id].append(1 if p.chosen < p.rejected else -1)
    label = {c: {u: _sign(sum(v)) for u, v in by_user.items()} for c, by_user in votes.items()}
    total = {c: sum(labels.values()) for c, labels in label.items()}

    def majority_without(c: str, user: str) -> int:
        return _sign(total[c] - label[c].get(user, 0))

    shared = [c for c, labels in label.items() if len(labels) >= 2]
    disagree = [c for c in shared if len(set(label[c].values())) > 1]
    repeated = [(c, u) for c, by_user in votes.items() for u, v in by_user.items() if len(v) >= 2]
    consistency = (
        sum(max(v.count(1), v.count(-1)) / len(v) for v in (votes[c][u] for c, u in repeated)) / len(repeated)
        if repeated else None
    )

    per_user: dict[str, dict[str, Any]] = {}
    for user in dict.fromkeys(p.user_id for p in pairs):
        agree = [_match(label[c][user], majority_without(c, user)) for c in shared if user in label[c]]
        oracle, major, n_votes = 0.0, 0.0, 0
        for c, by_user in votes.items():
            for vote in by_user.get(user, []):
                oracle += _match(vote, label[c][user])
                major += _match(vote, majority_without(c, user))
                n_votes += 1
        agreement = sum(agree) / len(agree) if agree else None
        per_user[user] = {
            "n_pairs": n_votes,
            "n_shared": len(agree),
            "agreement": agreement,
            "minority": agreement is not None and agreement < 0.5,
            "oracle_acc": oracle / n_votes,
            "majority_acc": major / n_votes,
            "room": (oracle - major) / n_votes,
        }
    rooms = [v["room"] for v in per_user.values()]
    return {
        "dataset": data.name,
        "split": split,
        "n_users": len(per_user),
        "n_pairs": len(pairs),
        "n_comparisons": len(votes),
        "n_shared_comparisons": len(shared),
        "disagreement": len(disagree) / len(shared) if shared else None,
        "consistency": consistency,
        "n_repeated": len(repeated),
        "minority_users": [u for u, v in per_user.items() if v["minority"]],
        "mean_room": sum(rooms) / len(rooms),
        "per_user": per_user,
    }


def characterize_splits(data: PrefData) -> dict[str, Any]:
    """Both splits: minority users from train, the majority-vote and oracle baselines from test."""
    train, test = characterize(data, "train"), characterize(data, "test")
    return {
        "train": train,
        "test": test,
        "minority_users": train["minority_users"],
        "baselines": {
            "majority_vote": {u: v["majority_acc"] for u, v in test["per_user"].items()},
            "oracle": {u: v["oracle_acc"] for u, v in test["per_user"].items()},
        },
    }
