"""Commands do what was asked or say why not: resume only the same settings, no defaults that hide a choice,
Ctrl-C says how to resume, output fit for machines."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from conftest import make_tiny_llama
from personalign.cli.main import app

TOY = {"name": "Zed Toy", "task": "write notes", "constraints": {"sign_off": "Cheers,\nZed", "no_bullets": True},
       "demonstrations": [{"prompt": f"Greet {n}.", "output": f"Hi {n}.\n\nCheers,\nZed"} for n in ("Al", "Bo")],
       "eval_prompts": ["Greet Gus.", "Greet Cy.", "Greet Di."]}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, chat_tokenizer):
    root = tmp_path_factory.mktemp("surprises")
    make_tiny_llama(chat_tokenizer, hidden=16, layers=1).save_pretrained(root / "tiny")
    chat_tokenizer.save_pretrained(root / "tiny")
    (root / "toy.yaml").write_text(yaml.safe_dump(TOY))
    return root


def run(*args: str):
    return CliRunner().invoke(app, list(args))


def _compare(tiny, out, *extra: str):
    return run("compare", "--profile", str(tiny / "toy.yaml"), "--methods", "base", "--model", str(tiny / "tiny"),
               "--max-new-tokens", "3", "--dtype", "fp32", "--out", str(out), *extra)


def test_compare_resumes_only_its_own_settings(tiny, tmp_path):
    out = tmp_path / "cmp"
    first = _compare(tiny, out, "--n-prompts", "2")
    assert first.exit_code == 0, first.output
    saved = (out / "config.yaml").read_text()
    outputs = (out / "outputs.jsonl").read_text()

    again = _compare(tiny, out, "--n-prompts", "2")  # same folder, no --resume: refused, suggests it
    assert again.exit_code == 2 and "add --resume" in again.stderr
    fewer = run("compare", "--out", str(out), "--resume", "--n-prompts", "1", "--max-new-tokens", "4")
    assert fewer.exit_code == 2 and "settings differ" in fewer.stderr
    assert "--max-new-tokens (3 → 4)" in fewer.stderr and "--n-prompts (2 → 1)" in fewer.stderr
    other = run("compare", "--out", str(out), "--resume", "--methods", "base,prompt")
    assert other.exit_code == 2 and "--methods" in other.stderr
    assert (out / "config.yaml").read_text() == saved and (out / "outputs.jsonl").read_text() == outputs

    resumed = run("compare", "--out", str(out), "--resume")  # its saved settings apply
    assert resumed.exit_code == 0, resumed.output
    assert "base: done in the earlier run, reused" in resumed.stderr
    assert (out / "outputs.jsonl").read_text() == outputs
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["prompts"]) == 2 and set(summary["methods"]) == {"base"}
    assert json.loads((out / "run.json").read_text())["status"] == "finished"


def test_compare_needs_a_profile_and_writes_nothing_without_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run("compare", "--methods", "base")
    assert result.exit_code == 2 and "compare needs --profile" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_says_what_was_saved_and_how_to_resume(tiny, tmp_path, monkeypatch):
    import personalign.evaluation.compare as compare

    real = compare.method_summary
    calls = []

    def interrupt_second(profile, texts):  # the user presses Ctrl-C while the second method finishes
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(profile, texts)

    monkeypatch.setattr(compare, "method_summary", interrupt_second)
    out = tmp_path / "cmp"
    result = run("compare", "--profile", str(tiny / "toy.yaml"), "--methods", "base,prompt", "--model",
                 str(tiny / "tiny"), "--max-new-tokens", "3", "--dtype", "fp32", "--out", str(out))
    assert result.exit_code == 130
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("interrupted: saved ") and "outputs.jsonl" in line
    assert line.endswith(f"resume with: personalign compare --out {out} --resume")
    monkeypatch.setattr(compare, "method_summary", real)
    resumed = run("compare", "--out", str(out), "--resume")
    assert resumed.exit_code == 0 and "base: done in the earlier run, reused" in resumed.stderr
    assert set(json.loads((out / "summary.json").read_text())["methods"]) == {"base", "prompt"}


def test_generate_writes_the_raw_text_when_piped(tiny):
    from personalign.config import ModelConfig, SamplingConfig
    from personalign.methods.spec import resolve_personalizer

    args = ["--max-new-tokens", "90", "--temperature", "0", "--dtype", "fp32", "--device", "cpu"]
    result = run("generate", "--profile", str(tiny / "toy.yaml"), "--method", "prompt", "--prompt", "Greet Gus.",
                 "--model", str(tiny / "tiny"), *args)
    assert result.exit_code == 0, result.output
    personalizer = resolve_personalizer("prompt", profile=str(tiny / "toy.yaml"),
                                        model=ModelConfig(model=str(tiny / "tiny"), dtype="fp32", device="cpu"))
    expected = personalizer.generate(["Greet Gus."], SamplingConfig(max_new_tokens=90, temperature=0.0))[0][0]
    assert len(expected) > 160  # longer than the width the console used to wrap at
    assert result.stdout == expected + "\n"


def test_judge_table_shows_decided_accuracy_and_json_is_strict(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    rows = [{"prompt": "Say hi.", "chosen": "Hi there.", "rejected": "Hi there."},  # rules cannot split: a tie
            {"prompt": "Say hi.", "chosen": "Hi.", "rejected": "- Hi\n- there"}]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    profile = tmp_path / "toy.yaml"
    profile.write_text(yaml.safe_dump(TOY))
    out = tmp_path / "jv"
    result = run("judge", "validate", "--judge", "rules", "--data", str(pairs), "--profile", str(profile),
                 "--n-boot", "20", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "decided" in result.stdout
    summary = json.loads((out / "summary.json").read_text(), parse_constant=_no_constants)
    (only,) = summary.values()
    assert "accuracy_decided" in only


def _no_constants(name: str) -> None:
    raise AssertionError(f"summary.json holds {name}, which is not JSON")


def test_demonstrations_that_break_the_profiles_constraints_are_refused(tmp_path):
    listed = {"prompt": "List it.", "output": "- a\n- b\n\nCheers,\nZed"}  # a bullet, with no_bullets: true
    bad = {**TOY, "demonstrations": [*TOY["demonstrations"], listed]}
    profile = tmp_path / "bad.yaml"
    profile.write_text(yaml.safe_dump(bad))
    result = run("generate", "--profile", str(profile), "--method", "prompt", "--prompt", "Hi.", "--model", "nowhere")
    assert result.exit_code == 2
    assert "demonstrations[2] fails no_bullets" in result.stderr and "accept_failing_demonstrations" in result.stderr
    profile.write_text(yaml.safe_dump({**bad, "accept_failing_demonstrations": True}))
    from personalign.profiles import load_profile

    assert len(load_profile(profile).demonstrations) == 3  # accepted knowingly


def test_misspelt_profile_fields_get_the_closest_name(tmp_path):
    profile = tmp_path / "typo.yaml"
    profile.write_text(yaml.safe_dump({**TOY, "constraints": {"signoff": "Cheers,\nZed"}}))
    result = run("generate", "--profile", str(profile), "--method", "prompt", "--prompt", "Hi.")
    assert result.exit_code == 2 and "did you mean `constraints.sign_off`?" in result.stderr


def test_generate_refuses_options_a_run_dir_decides(tmp_path):
    result = run("generate", "--run", str(tmp_path), "--method", "prompt", "--prompt", "Hi.")
    assert result.exit_code == 2 and "--method: not used with --run" in result.stderr
