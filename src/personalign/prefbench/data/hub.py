"""Loaders for the hub-hosted sets of Dong et al.: P-SOUPS, PersonalLLM, TL;DR workers, UltraFeedback-P.

Each loader reads either the Hugging Face hub (`datasets.load_dataset`) or a local copy in the hub's own
schema (a .jsonl/.json/.parquet file with a `split` column, or a folder holding `train.*` and
`test.*`/`validation.*`), and converts rows to the common prefbench schema. Hub schemas, as used by the
reference implementation (dong-river/Personalization-Benchmark):

- `RiverDong/psoups`, `RiverDong/Personal-LLM-DPO`: `prompt, chosen, rejected, uid` (uid 1–6 / 1–8),
  splits train/test.
- `openai/summarize_from_feedback` (config `comparisons`): `info{post, title, subreddit}`,
  `summaries[{text, policy}]`, `choice` (0/1), `worker`; splits train/validation; users = the 5 most
  frequent workers of the train split.
- `RiverDong/ultrafeedback-personalized`: `attributes` (the fine-grained rating dimension, used as the
  user), `prompt, chosen, rejected` (text or chat messages); splits train/test.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from personalign.errors import DataError, PersonalignError
from personalign.prefbench.schema import PrefData, PrefPair, comparison_id
from personalign.settings import cache_dir, hub_offline

HUB_IDS = {
    "psoups": "RiverDong/psoups",
    "personal_llm": "RiverDong/Personal-LLM-DPO",
    "tldr": "openai/summarize_from_feedback",
    "ultrafeedback": "RiverDong/ultrafeedback-personalized",
}
# Split names on the hub → prefbench splits.
SPLIT_MAP = {"train": "train", "test": "test", "validation": "test", "valid": "test", "eval": "test"}
LOCAL_SUFFIXES = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _local_files(path: Path) -> tuple[str, dict[str, list[str]] | str]:
    """(datasets builder, data_files) for a local copy: a folder of split files, or one file."""
    if path.is_dir():
        files: dict[str, list[str]] = {}
        builder = None
        for child in sorted(path.iterdir()):
            stem = child.name.split(".")[0].split("-")[0]
            suffix = "".join(child.suffixes[-1:])
            if suffix in LOCAL_SUFFIXES and stem in SPLIT_MAP:
                builder = builder or LOCAL_SUFFIXES[suffix]
                files.setdefault(stem, []).append(str(child))
        if not files or builder is None:
            raise DataError(
                f"{path}: no split files found; put train.jsonl and test.jsonl (or .parquet) in the folder"
            )
        return builder, files
    if path.suffix not in LOCAL_SUFFIXES:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; use .jsonl, .json or .parquet")
    if not path.is_file():
        raise DataError(f"{path}: file not found; check --data-path")
    return LOCAL_SUFFIXES[path.suffix], str(path)


def read_hub_rows(hub_id: str, local: str | Path | None = None, config: str | None = None) -> list[dict[str, Any]]:
    """All rows of `hub_id` (or of the local copy), each with a `split` key in prefbench terms.

    Hub failures (no network, unknown id, auth) become one PersonalignError line naming the fix.
    """
    from datasets import load_dataset

    if local is not None:
        builder, files = _local_files(Path(local))
        try:
            # Local copies are converted into our own cache, not the user's hub cache.
            loaded = load_dataset(builder, data_files=files, cache_dir=str(cache_dir() / "hf_datasets"))
        except Exception as exc:  # datasets raises many types for malformed files; report the first line
            raise DataError(f"{local}: cannot read as {builder} ({_first_line(exc)})") from None
    else:
        if hub_offline():
            raise PersonalignError(
                f"{hub_id}: the Hugging Face hub is disabled (HF_HUB_OFFLINE is set); unset it, or pass "
                "--data-path to a local copy (.jsonl/.parquet in the hub's schema)"
            )
        try:
            loaded = load_dataset(hub_id, config) if config else load_dataset(hub_id)
        except Exception as exc:  # network, auth and not-found errors all end here
            raise PersonalignError(
                f"cannot load {hub_id} from the Hugging Face hub ({_first_line(exc)}); check the network or "
                "HF_TOKEN, or pass --data-path to a local copy (.jsonl/.parquet in the hub's schema)"
            ) from None
    rows: list[dict[str, Any]] = []
    for split_name, table in loaded.items():
        for row in table:
            split = row.get("split") or SPLIT_MAP.get(str(split_name))
            if split is None:
                raise DataError(f"{local or hub_id}: unknown split {split_name!r}; use train/test/validation")
            rows.append({**row, "split": SPLIT_MAP.get(str(split), str(split))})
    if not rows:
        raise DataError(f"{local or hub_id}: no rows")
    return rows


def _require(row: Mapping[str, Any], fields: Iterable[str], source: str, index: int) -> None:
    missing = [f for f in fields if f not in row or row[f] is None]
    if missing:
        raise DataError(f"{source}: row {index} lacks field(s) {', '.join(missing)}; see the hub card for the schema")


def _message_text(value: Any) -> str:
    """Responses may be text or chat messages; use the last assistant turn's content."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and isinstance(value[-1], Mapping):
        for message in reversed(value):
            if message.get("role") == "assistant":
                return str(message.get("content", ""))
        return str(value[-1].get("content", ""))
    return str(value)


def cap_per_user(pairs: list[PrefPair], max_train: int | None, max_test: int | None, seed: int) -> list[PrefPair]:
    """Keep at most `max_*` pairs per user and split, sampled with a fixed seed (hub sets are large)."""
    rng = np.random.default_rng(seed)
    groups: dict[tuple[str, str], list[PrefPair]] = {}
    for p in pairs:
        groups.setdefault((p.user_id, p.split), []).append(p)
    kept: list[PrefPair] = []
    for (_, split), group in groups.items():
        limit = max_train if split == "train" else max_test
        if limit is not None and len(group) > limit:
            idx = np.sort(rng.choice(len(group), size=limit, replace=False))
            group = [group[i] for i in idx]
        kept.extend(group)
    return kept


def convert_uid_rows(rows: list[dict[str, Any]], source: str, users: Iterable[int] | None) -> list[PrefPair]:
    """P-SOUPS / PersonalLLM rows (`prompt, chosen, rejected, uid`) → pairs."""
    wanted = {str(u) for u in users} if users is not None else None
    pairs = []
    for i, row in enumerate(rows):
        _require(row, ("prompt", "chosen", "rejected", "uid"), source, i)
        uid = str(row["uid"])
        if wanted is not None and uid not in wanted:
            continue
        chosen, rejected = _message_text(row["chosen"]), _message_text(row["rejected"])
        if not chosen.strip() or not rejected.strip() or chosen == rejected:
            continue
        pairs.append(PrefPair(uid, row["prompt"], chosen, rejected, row["split"],
                              comparison_id(row["prompt"], chosen, rejected)))
    return pairs


def convert_tldr_rows(rows: list[dict[str, Any]], source: str, n_workers: int = 5) -> list[PrefPair]:
    """summarize_from_feedback comparisons → pairs for the `n_workers` most frequent train workers."""
    for i, row in enumerate(rows):
        _require(row, ("info", "summaries", "choice", "worker"), source, i)
    counts = Counter(r["worker"] for r in rows if r["split"] == "train")
    workers = [w for w, _ in counts.most_common(n_workers)]
    pairs = []
    for i, row in enumerate(rows):
        if row["worker"] not in workers:
            continue
        info, summaries, choice = row["info"], row["summaries"], int(row["choice"])
        post = info.get("post") if isinstance(info, Mapping) else None
        if not post:
            continue  # the CNN/DM articles have no post; the benchmark uses Reddit posts only
        if len(summaries) != 2 or choice not in (0, 1):
            raise DataError(f"{source}: row {i} needs two summaries and choice 0 or 1")
        prompt = f"SUBREDDIT: r/{info.get('subreddit', '')}\nTITLE: {info.get('title', '')}\nPOST: {post}\nTL;DR:"
        chosen, rejected = summaries[choice]["text"], summaries[1 - choice]["text"]
        if chosen == rejected:
            continue
        pairs.append(PrefPair(str(row["worker"]), prompt, chosen, rejected, row["split"],
                              comparison_id(prompt, chosen, rejected)))
    return pairs


def convert_ultrafeedback_rows(rows: list[dict[str, Any]], source: str,
                               attributes: Iterable[str] | None) -> list[PrefPair]:
    """UltraFeedback-P rows (`attributes, prompt, chosen, rejected`): one user per rating dimension."""
    wanted = set(attributes) if attributes is not None else None
    pairs = []
    for i, row in enumerate(rows):
        _require(row, ("attributes", "prompt", "chosen", "rejected"), source, i)
        user = str(row["attributes"])
        if wanted is not None and user not in wanted:
            continue
        prompt = _message_text(row["prompt"]) if not isinstance(row["prompt"], str) else row["prompt"]
        chosen, rejected = _message_text(row["chosen"]), _message_text(row["rejected"])
        if not chosen.strip() or not rejected.strip() or chosen == rejected:
            continue
        pairs.append(PrefPair(user, prompt, chosen, rejected, row["split"], comparison_id(prompt, chosen, rejected)))
    return pairs


def _load(name: str, convert: Callable[[list[dict[str, Any]], str], list[PrefPair]], local: str | Path | None,
          config: str | None, max_train: int | None, max_test: int | None, seed: int) -> PrefData:
    hub_id = HUB_IDS[name]
    rows = read_hub_rows(hub_id, local, config)
    source = str(local or hub_id)
    pairs = cap_per_user(convert(rows, source), max_train, max_test, seed)
    if not pairs:
        raise DataError(f"{source}: no usable pairs after filtering (users, empty texts)")
    return PrefData(name, pairs, {"source": source, "hub_id": hub_id})


def load_psoups(local: str | Path | None = None, max_train: int | None = 2000, max_test: int | None = 500,
                seed: int = 0) -> PrefData:
    return _load("psoups", lambda r, s: convert_uid_rows(r, s, range(1, 7)), local, None, max_train, max_test, seed)


def load_personal_llm(local: str | Path | None = None, max_train: int | None = 2000, max_test: int | None = 500,
                      seed: int = 0) -> PrefData:
    return _load("personal_llm", lambda r, s: convert_uid_rows(r, s, range(1, 9)), local, None, max_train,
                 max_test, seed)


def load_tldr(local: str | Path | None = None, max_train: int | None = 2000, max_test: int | None = 500,
              seed: int = 0) -> PrefData:
    return _load("tldr", convert_tldr_rows, local, "comparisons", max_train, max_test, seed)


def load_ultrafeedback(local: str | Path | None = None, max_train: int | None = 2000, max_test: int | None = 500,
                       seed: int = 0, attributes: Iterable[str] | None = ("helpfulness", "honesty")) -> PrefData:
    """Users = rating dimensions; the benchmark's two (helpfulness, honesty) by default, as in its code."""
    return _load("ultrafeedback", lambda r, s: convert_ultrafeedback_rows(r, s, attributes), local,
                 "conversational", max_train, max_test, seed)
