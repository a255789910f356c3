"""DITTO author profiles and judge pools: on the real files, and on a tiny fixture written here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from personalign.errors import DataError, PersonalignError
from personalign.profiles.ditto_authors import (
    CCAT50_PROMPT,
    author_ids,
    author_profile,
    authorship_pools,
    first_sentence,
    normalize_text,
)

NAMES = {0: "AnnaAble", 1: "BenBaker", 2: "CaraCole"}


def article(author: int, k: int) -> str:
    return f"Lead {k} of {NAMES[author]} said on Monday. It went on.\r\nSecond paragraph {k} by {author}.\r\n"


def write_tiny_ditto(root: Path) -> Path:
    """A data root with ditto/ holding 3 CMCC and 3 CCAT50 authors in the real files' schema."""
    folder = root / "ditto"
    folder.mkdir(parents=True)
    rows = []
    for a in range(3):
        for split, n in (("train", 4), ("val", 1), ("test", 2)):
            for i in range(n):
                rows.append({"dataset": "cmcc", "split": split, "author_id": a, "idx": i,
                             "prompt": f"Write an essay on topic {split}-{i}", "output": f"cmcc {a} {split} {i} text"})
        for split in ("val", "test"):
            text = normalize_text(article(a, 0 if split == "val" else 100))
            rows.append({"dataset": "ccat50", "split": split, "author_id": a, "idx": 0,
                         "prompt": CCAT50_PROMPT + first_sentence(text), "output": text})
    (folder / "ditto_processed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    raw = [{"split": "C50train", "author": NAMES[a], "file": f"{a}-{k}.txt", "text": article(a, k)}
           for a in range(3) for k in range(9)]  # k=0 is the DITTO val text: must be excluded
    raw += [{"split": "C50test", "author": NAMES[a], "file": f"{a}-t{k}.txt", "text": article(a, 100 + k)}
            for a in range(3) for k in range(4)]  # k=0 is the DITTO test text
    (folder / "ccat50_raw.jsonl").write_text("".join(json.dumps(r) + "\n" for r in raw))
    (folder / "ccat50_author_ids.json").write_text(json.dumps({str(a): n for a, n in NAMES.items()}))
    return root


def test_first_sentence_keeps_spacing_and_stops_at_the_first_sentence():
    assert first_sentence("Shares of Bre-X Minerals Ltd. fell 5 percent.  Then more.\nNext") == (
        "Shares of Bre-X Minerals Ltd. fell 5 percent."
    )
    assert first_sentence("One  two three, four said.\r\nSecond line.") == "One  two three, four said."


def test_tiny_fixture_profiles_follow_ditto(tmp_path):
    root = write_tiny_ditto(tmp_path)
    assert author_ids("cmcc", root) == [0, 1, 2]
    cmcc = author_profile("cmcc", 1, root)
    assert [d.output for d in cmcc.demonstrations] == [f"cmcc 1 train {i} text" for i in range(4)]
    assert [(p.prompt, p.reference) for p in cmcc.eval_prompts] == [
        ("Write an essay on topic test-0", "cmcc 1 test 0 text"),
        ("Write an essay on topic test-1", "cmcc 1 test 1 text"),
    ]
    ccat = author_profile("ccat50", 2, root, n_demos=7)
    assert len(ccat.demonstrations) == 7
    held_out = normalize_text(article(2, 0))
    assert all(d.output != held_out for d in ccat.demonstrations)  # DITTO's val text is never a demonstration
    for demo in ccat.demonstrations:
        assert demo.prompt.startswith(CCAT50_PROMPT) and demo.prompt.endswith("said on Monday.")
        assert demo.output.startswith(demo.prompt.removeprefix(CCAT50_PROMPT))
    assert ccat.eval_prompts[0].reference == normalize_text(article(2, 100))


def test_tiny_fixture_pools_are_disjoint_and_exclude_heldout(tmp_path):
    root = write_tiny_ditto(tmp_path)
    pools = authorship_pools("ccat50", root, max_per_author=20)
    for a in range(3):
        assert len(pools.train[a]) == 8  # 9 C50train texts minus the DITTO val text
        assert normalize_text(article(a, 0)) not in pools.train[a]
        assert len(pools.heldout[a]) == 4  # DITTO test text + the 3 other C50test texts
        assert not set(pools.train[a]) & set(pools.heldout[a])
    cmcc = authorship_pools("cmcc", root)
    assert len(cmcc.train[0]) == 5 and len(cmcc.heldout[0]) == 2


def test_bad_inputs_are_one_line_errors(tmp_path):
    root = write_tiny_ditto(tmp_path)
    with pytest.raises(DataError, match="unknown; choose one of"):
        author_profile("imdb", 0, root)  # type: ignore[arg-type]
    with pytest.raises(DataError, match="valid ids"):
        author_profile("cmcc", 99, root)
    with pytest.raises(DataError, match="fewer than 30"):
        author_profile("ccat50", 0, root, n_demos=30)
    with pytest.raises(PersonalignError, match="data-dir"):
        author_profile("cmcc", 0, tmp_path / "nowhere")


def test_real_cmcc_profile(shared_data):
    assert author_ids("cmcc", shared_data) == list(range(21))
    profile = author_profile("cmcc", 0, shared_data)
    assert len(profile.demonstrations) == 7
    assert len(profile.eval_prompts) == 2 and all(p.reference for p in profile.eval_prompts)
    demo_outputs = {d.output for d in profile.demonstrations}
    assert not demo_outputs & {p.reference for p in profile.eval_prompts}


def test_real_ccat50_profile_excludes_ditto_heldout_texts(shared_data):
    processed = [json.loads(line) for line in (shared_data / "ditto" / "ditto_processed.jsonl").open()]
    heldout = {normalize_text(r["output"]) for r in processed if r["dataset"] == "ccat50"}
    assert len(author_ids("ccat50", shared_data)) == 50
    for author in (0, 12):  # 12: ScottHillis, whose text also sits under another author in the raw corpus
        profile = author_profile("ccat50", author, shared_data)
        assert len(profile.demonstrations) == 7 and len(profile.eval_prompts) == 3
        assert not {d.output for d in profile.demonstrations} & heldout
        assert all(d.prompt.startswith(CCAT50_PROMPT) for d in profile.demonstrations)
    pools = authorship_pools("ccat50", shared_data, max_per_author=10)
    train = {t for texts in pools.train.values() for t in texts}
    assert not train & heldout
    assert not train & {t for texts in pools.heldout.values() for t in texts}
