"""Hub loaders on small fixture files in each hub set's own schema, and the hub-unreachable error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from personalign.errors import DataError, PersonalignError
from personalign.prefbench.data import load_prefdata
from personalign.prefbench.data.hub import load_personal_llm, load_psoups, load_tldr, load_ultrafeedback


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def uid_rows(n_users: int, split_rows: int) -> list[dict]:
    return [{"prompt": f"q{i}", "chosen": f"good {i} for {u}", "rejected": f"bad {i}", "uid": u}
            for u in range(1, n_users + 1) for i in range(split_rows)]


def test_psoups_folder_of_split_files(tmp_path: Path) -> None:
    folder = tmp_path / "psoups"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", [*uid_rows(6, 3), {"prompt": "q", "chosen": "a", "rejected": "b", "uid": 9}])
    write_jsonl(folder / "test.jsonl", uid_rows(6, 2))
    data = load_psoups(folder)
    assert data.users == ["1", "2", "3", "4", "5", "6"]  # uid 9 is not a P-SOUPS user
    assert {u: c for u, c in data.summary()["users"].items()}["3"] == {"train": 3, "test": 2}
    p = data.split("test")[0]
    assert (p.prompt, p.chosen, p.rejected) == ("q0", "good 0 for 1", "bad 0")


def test_personal_llm_single_parquet_with_split_column_and_caps(tmp_path: Path) -> None:
    from datasets import Dataset

    rows = [{**r, "split": "train"} for r in uid_rows(8, 5)] + [{**r, "split": "test"} for r in uid_rows(8, 4)]
    path = tmp_path / "personal_llm.parquet"
    Dataset.from_list(rows).to_parquet(str(path))
    data = load_personal_llm(path, max_train=2, max_test=3)
    assert len(data.users) == 8
    assert all(v == {"train": 2, "test": 3} for v in data.summary()["users"].values())


def test_tldr_keeps_the_most_frequent_workers_and_reddit_posts(tmp_path: Path) -> None:
    def row(worker: str, i: int, post: str | None = "a post") -> dict:
        return {"info": {"post": post, "title": f"t{i}", "subreddit": "sub"},
                "summaries": [{"text": f"short {i}", "policy": "sup"}, {"text": f"long summary {i}", "policy": "sup"}],
                "choice": i % 2, "worker": worker}

    train = [row(f"w{w}", i) for w in range(7) for i in range(10 - w)] + [row("w0", 99, post=None)]
    folder = tmp_path / "tldr"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", train)
    write_jsonl(folder / "validation.jsonl", [row("w1", 0), row("w6", 1)])
    data = load_tldr(folder)
    assert data.users == ["w0", "w1", "w2", "w3", "w4"]
    assert len(data.split("test")) == 1  # w6 is not among the 5 most frequent
    first = data.split("train")[0]
    assert first.prompt.startswith("SUBREDDIT: r/sub\nTITLE: t0\nPOST: a post")
    assert (first.chosen, first.rejected) == ("short 0", "long summary 0")  # choice 0


def test_ultrafeedback_chat_messages_and_attribute_users(tmp_path: Path) -> None:
    def row(attr: str, i: int) -> dict:
        return {"attributes": attr, "prompt": f"q{i}",
                "chosen": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"yes {i}"}],
                "rejected": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"no {i}"}]}

    folder = tmp_path / "uf"
    folder.mkdir()
    rows = [row(a, i) for a in ("helpfulness", "honesty", "truthfulness") for i in range(3)]
    write_jsonl(folder / "train.jsonl", rows)
    write_jsonl(folder / "test.jsonl", rows)
    data = load_ultrafeedback(folder)
    assert data.users == ["helpfulness", "honesty"]
    assert data.pairs[0].chosen == "yes 0" and data.pairs[0].rejected == "no 0"


def test_missing_fields_and_bad_files_are_clear_errors(tmp_path: Path) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", [{"prompt": "q", "chosen": "a", "uid": 1}])
    with pytest.raises(DataError, match=r"row 0 lacks field.*rejected"):
        load_psoups(folder)
    with pytest.raises(DataError, match="no split files"):
        load_psoups(tmp_path / "bad" / ".." / "bad" / "..")
    with pytest.raises(DataError, match="unsupported file type"):
        load_psoups(tmp_path / "x.csv")


def test_hub_unreachable_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PersonalignError, match=r"HF_HUB_OFFLINE is set.*--data-path"):
        load_prefdata("psoups")
    # With the env switch off, a real load_dataset call fails (offline here) and is converted too.
    import datasets
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(PersonalignError) as info:
        load_psoups()
    message = str(info.value)
    assert message.startswith("cannot load RiverDong/psoups from the Hugging Face hub") and "\n" not in message
