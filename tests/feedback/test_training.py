"""Feedback → training: exported pairs and edits train a tiny model with dpo and ditto in the right direction,
answers on evaluation prompts stay out, and the CLI errors are one line."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from conftest import make_tiny_llama
from personalign.backends.hf import HFBackend
from personalign.config import ModelConfig
from personalign.feedback.db import Candidate, FeedbackDB, digest
from personalign.feedback.export import export
from personalign.methods.base import load_personalizer
from personalign.profiles.loading import parse_profile

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TOY = {"name": "Zed Toy", "task": "write notes", "constraints": {"sign_off": "Cheers,\nZed"},
       "demonstrations": [{"prompt": f"Greet {n}.", "output": f"Hi {n}.\n\nCheers,\nZed"} for n in ("Al", "Bo")],
       "eval_prompts": ["Greet Gus."]}
GOOD, BAD = "Hi {n}.\n\nCheers,\nZed", "Hi {n}.\n\nBest,\nBob"
EDITED = "Hi Fay, lovely to hear from you.\n\nCheers,\nZed"


def run_cli(*args: str):
    from personalign.cli.main import app

    return CliRunner().invoke(app, list(args))


@pytest.fixture
def feedback_db(tmp_path):
    """Choices preferring the Zed sign-off (shown on either side), one tie, one edit, and an eval-prompt answer."""
    profile = parse_profile(TOY)
    db = FeedbackDB(tmp_path / "feedback.sqlite")
    version = db.profile_version(profile)
    for i, name in enumerate(["Al", "Bo", "Cy", "Di"]):
        good = Candidate(GOOD.format(n=name), "prompt", None, i)
        bad = Candidate(BAD.format(n=name), "base", None, i + 10)
        rnd = db.add_round(f"Greet {name}.", "file", good, bad, "xy" if i % 2 else "yx", version)
        shown = "A" if rnd.shown["A"] is good else "B"
        db.record_choice(rnd.id, digest(rnd.prompt), shown, version)
    tie = db.add_round("Greet Ed.", "file", Candidate("Hi Ed.", "prompt", None, 1),
                       Candidate("Yo Ed.", "base", None, 2), "xy", version)
    db.record_choice(tie.id, digest(tie.prompt), "tie", version)
    # The edit keeps the sign-off and changes the body: only the edit itself teaches this difference.
    edit_round = db.add_round("Greet Fay.", "typed", Candidate(GOOD.format(n="Fay"), "prompt", None, 3),
                              Candidate("Hey.", "prompt", None, 4), "xy", version)
    db.record_edit(edit_round.id, digest("Greet Fay."), "A", EDITED, version)
    # An answer on the evaluation prompt, preferring the *other* sign-off: it must never train.
    held = db.add_round("Greet Gus.", "eval", Candidate(BAD.format(n="Gus"), "base", None, 5),
                        Candidate(GOOD.format(n="Gus"), "prompt", None, 6), "xy", version)
    db.record_choice(held.id, digest("Greet Gus."), "A", version)
    return db, profile


def test_export_directions_ties_and_held_out_eval(feedback_db):
    db, profile = feedback_db
    pairs = export(db, "pairs", profile)
    assert pairs.held_out == 1 and pairs.skipped == {"ties": 1}
    assert [r["kind"] for r in pairs.rows] == ["choice"] * 4 + ["edit"]
    assert all(r["chosen"].endswith("Cheers,\nZed") and "Bob" in r["rejected"] for r in pairs.rows[:4])
    assert (pairs.rows[4]["chosen"], pairs.rows[4]["rejected"]) == (EDITED, GOOD.format(n="Fay"))
    assert all(r["prompt"] != "Greet Gus." for r in pairs.rows)
    assert pairs.rows[0]["chosen_source"] == {"method": "prompt", "run": None, "seed": 0}
    assert len(export(db, "pairs", profile, include_eval=True).rows) == 6
    demos = export(db, "demonstrations", profile)
    assert [(d["prompt"], d["output"]) for d in demos.rows] == [("Greet Fay.", EDITED)]


def test_feedback_export_cli(feedback_db, tmp_path):
    db, _ = feedback_db
    out = tmp_path / "pairs.jsonl"
    result = run_cli("feedback", "export", "--db", str(db.path), "--format", "pairs", "--out", str(out))
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 5 and {"prompt", "chosen", "rejected"} <= rows[0].keys()
    stdout = run_cli("feedback", "export", "--db", str(db.path), "--format", "demonstrations")
    assert stdout.exit_code == 0 and "Greet Fay." in stdout.stdout
    for bad, message in [(["--db", str(db.path), "--format", "csv"], "--format 'csv'"),
                         (["--db", str(tmp_path / "missing.sqlite")], "file not found")]:
        result = run_cli("feedback", "export", *bad)
        assert result.exit_code == 2 and message in result.output
        assert len(result.output.strip().splitlines()) == 1


@pytest.fixture
def tiny_model_dir(tmp_path, chat_tokenizer):
    path = tmp_path / "tiny"
    make_tiny_llama(chat_tokenizer, seed=5).save_pretrained(path)
    chat_tokenizer.save_pretrained(path)
    return path


def margin(backend, prompt: str, chosen: str, rejected: str) -> float:
    conv = [{"role": "user", "content": prompt}]
    a, b = backend.logprobs([conv, conv], [chosen, rejected])
    return a - b


def train(tmp_path, tiny_model_dir, feedback_db, method: str, method_config: dict) -> object:
    db, _ = feedback_db
    profile_file = tmp_path / "toy.yaml"
    profile_file.write_text(yaml.safe_dump(TOY))
    config = tmp_path / f"{method}.yaml"
    config.write_text(yaml.safe_dump({"model": {"model": str(tiny_model_dir), "dtype": "fp32", "device": "cpu"},
                                      "method_config": method_config}))
    run = tmp_path / f"run-{method}"
    result = run_cli("personalize", "--profile", str(profile_file), "--method", method, "--feedback", str(db.path),
                     "--config", str(config), "--out", str(run))
    assert result.exit_code == 0, (result.output, result.exception)
    return run


def test_dpo_from_feedback_prefers_what_the_person_chose(tmp_path, tiny_model_dir, feedback_db, one_torch_thread):
    base = HFBackend(ModelConfig(model=str(tiny_model_dir), device="cpu", dtype="fp32"))
    # Unseen name, and the eval prompt whose held-out answer preferred the other sign-off.
    probes = [("Greet Hal.", GOOD.format(n="Hal"), BAD.format(n="Hal")), ("Greet Gus.", GOOD.format(n="Gus"),
                                                                          BAD.format(n="Gus"))]
    before = [margin(base, *p) for p in probes]
    run = train(tmp_path, tiny_model_dir, feedback_db, "dpo", {
        "beta": 0.1, "lr": 1e-2, "max_steps": 10, "batch_size": 5, "lora": {"r": 8, "dropout": 0.0,
                                                                            "target_modules": ALL_LINEAR}})
    snapshot = [json.loads(line) for line in (run / "feedback_pairs.jsonl").read_text().splitlines()]
    assert len(snapshot) == 5 and all(r["prompt"] != "Greet Gus." for r in snapshot)
    trained = load_personalizer(run, device="cpu", dtype="fp32").backend
    after = [margin(trained, *p) for p in probes]
    assert all(a > b + 1.0 for a, b in zip(after, before, strict=True)), (before, after)


def test_ditto_from_feedback_learns_the_edit(tmp_path, tiny_model_dir, feedback_db, one_torch_thread):
    base = HFBackend(ModelConfig(model=str(tiny_model_dir), device="cpu", dtype="fp32"))
    edited, original = EDITED, GOOD.format(n="Fay")
    before = margin(base, "Greet Fay.", edited, original)
    run = train(tmp_path, tiny_model_dir, feedback_db, "ditto", {
        "sft_steps": 4, "sft_lr": 1e-2, "sft_warmup_steps": 0, "lr": 1e-2, "iterations": 1, "steps_per_iteration": 4,
        "samples_per_prompt": 2, "pairs_per_step": 6, "sample_max_new_tokens": 8, "batch_size": 3,
        "lora": {"r": 8, "dropout": 0.0, "target_modules": ALL_LINEAR}})
    manifest = json.loads((run / "method.json").read_text())
    prompts = [d["prompt"] for d in manifest["profile"]["demonstrations"]]
    assert prompts == ["Greet Al.", "Greet Bo.", "Greet Fay."]  # the edit joined the demonstrations
    trained = load_personalizer(run, device="cpu", dtype="fp32").backend
    assert margin(trained, "Greet Fay.", edited, original) > before + 1.0


def test_feedback_errors_before_any_model_loads(tmp_path, feedback_db):
    db, _ = feedback_db
    profile_file = tmp_path / "toy.yaml"
    profile_file.write_text(yaml.safe_dump(TOY))
    empty = FeedbackDB(tmp_path / "empty.sqlite")
    cases = [(["--method", "dpo", "--feedback", str(empty.path)], "no training pairs"),
             (["--method", "ditto", "--feedback", str(tmp_path / "none.sqlite")], "not found"),
             (["--method", "rlaif", "--feedback", str(db.path)], "cannot use feedback")]
    for args, message in cases:
        result = run_cli("personalize", "--profile", str(profile_file), "--model", "/nonexistent-model", *args,
                         "--out", str(tmp_path / "never"))
        assert result.exit_code == 2 and message in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "never").exists()
