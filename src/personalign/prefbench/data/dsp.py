"""DSP (Linear95/DSP): 661 queries × 4 domain users who each prefer their own domain's response.

Setup of the DSP paper, used by Dong et al.: user `d` prefers `responses[d]` over every other response of
the same query (the three other domains and `normal`). A comparison between two domain responses is labeled
by both of their users (who disagree), so `pair_id` ties those rows together. The domains double as
preference dimensions (Personalized Soups): each user declares its own domain.
"""

from __future__ import annotations

from pathlib import Path

from personalign.errors import DataError
from personalign.io import read_json
from personalign.prefbench.schema import DimensionSpec, PrefData, PrefPair, comparison_id, split_of
from personalign.settings import data_dir

DSP_FILE = Path("dsp") / "domain_specific_preference.test.json"
DSP_USERS = ("academy", "business", "entertainment", "literature")
OTHER_RESPONSES = (*DSP_USERS, "normal")


def load_dsp(data_path: str | Path | None = None, test_frac: float = 0.2, max_queries: int | None = None) -> PrefData:
    """Load DSP from `data_path` (the file itself, or a data root holding `dsp/...`; default: `data_dir()`)."""
    path = Path(data_path) if data_path is not None and Path(data_path).is_file() else data_dir(data_path) / DSP_FILE
    records = read_json(path, expected="DSP's [{query, responses}] list")
    if not isinstance(records, list):
        raise DataError(f"{path}: expected a list of {{query, responses}} objects")
    if max_queries is not None:
        records = records[:max_queries]
    pairs: list[PrefPair] = []
    for index, rec in enumerate(records):
        if not isinstance(rec, dict) or "query" not in rec or "responses" not in rec:
            raise DataError(f"{path}: record {index} lacks 'query' or 'responses'")
        query, responses = rec["query"], rec["responses"]
        missing = [d for d in OTHER_RESPONSES if d not in responses]
        if missing:
            raise DataError(f"{path}: record {index} lacks responses for {', '.join(missing)}")
        split = split_of(query, test_frac, salt="dsp")
        for user in DSP_USERS:
            own = responses[user]
            for other in OTHER_RESPONSES:
                if other == user:
                    continue
                rejected = responses[other]
                # One DSP response is empty; a comparison against nothing says nothing about taste.
                if not own.strip() or not rejected.strip() or own == rejected:
                    continue
                pairs.append(PrefPair(
                    user_id=user, prompt=query, chosen=own, rejected=rejected, split=split,
                    pair_id=comparison_id(query, own, rejected),
                ))
    # P-SOUPS on DSP: the four domains are the preference dimensions, each user declares its own (one-hot).
    dims = DimensionSpec(list(DSP_USERS), {u: {u: 1.0} for u in DSP_USERS}, from_users=True)
    return PrefData("dsp", pairs, {"source": str(path), "users": list(DSP_USERS), "test_frac": test_frac}, dims)
