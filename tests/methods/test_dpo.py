"""DPO: pair-file validation, reference = starting weights, and training moves the preference margin."""

from __future__ import annotations

import json

import pytest

from personalign.errors import DataError, PersonalignError
from personalign.methods.base import build_personalizer
from personalign.methods.dpo import load_pairs
from personalign.profiles.loading import parse_profile
from personalign.runs import RunDir

PROFILE = parse_profile({"name": "Zed Toy", "task": "write notes",
                         "demonstrations": [{"prompt": "Greet Al.", "output": "Hi Al.\n\nCheers,\nZed"}]})
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def write_pairs(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_pair_file_errors_name_line_and_field(tmp_path):
    good = {"prompt": "p", "chosen": "a", "rejected": "b"}
    path = write_pairs(tmp_path / "pairs.jsonl", [good, {"prompt": "p", "chosen": "a"}])
    with pytest.raises(DataError) as err:
        load_pairs(path)
    message = str(err.value)
    assert "pairs.jsonl:2" in message and "'rejected'" in message and "\n" not in message
    write_pairs(path, [{**good, "chosen": ""}])
    with pytest.raises(DataError, match="'chosen' missing or empty"):
        load_pairs(path)
    assert load_pairs(write_pairs(path, [good, {**good, "extra": 1}])) == [good, good]


def test_dpo_without_pairs_is_a_clear_error(tiny_backend):
    with pytest.raises(PersonalignError, match="--pairs"):
        build_personalizer("dpo", tiny_backend, {}).fit(PROFILE)


def test_dpo_raises_margin_of_chosen_over_rejected(tiny_backend, tmp_path):
    names = ["Al", "Bo", "Cy", "Di"]
    rows = [{"prompt": f"Greet {n}.", "chosen": f"Hi {n}.\n\nCheers,\nZed", "rejected": f"Hi {n}.\n\nBest,\nBob"}
            for n in names]
    pairs = write_pairs(tmp_path / "pairs.jsonl", rows)
    conv = [{"role": "user", "content": "Greet Gus."}]  # unseen prompt

    def margin() -> float:
        chosen, rejected = tiny_backend.logprobs([conv, conv], ["Hi Gus.\n\nCheers,\nZed", "Hi Gus.\n\nBest,\nBob"])
        return chosen - rejected

    before = margin()
    method = build_personalizer("dpo", tiny_backend, {
        "pairs": str(pairs), "beta": 0.1, "lr": 1e-2, "max_steps": 10, "batch_size": 4,
        "lora": {"r": 8, "dropout": 0.0, "target_modules": ALL_LINEAR}})
    method.fit(PROFILE, RunDir(tmp_path / "run"))
    assert margin() > before + 1.0
    steps = [r for r in RunDir(tmp_path / "run").metrics if r.get("phase") == "dpo"]
    # Step 1 runs at the reference weights: loss is exactly log 2 and the margin is zero.
    assert steps[0]["loss"] == pytest.approx(0.693147, abs=1e-4)
    assert steps[0]["reward_margin"] == pytest.approx(0, abs=1e-4)
    assert steps[-1]["loss"] < steps[0]["loss"] and steps[-1]["pair_accuracy"] == 1.0
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").is_file()
