"""The CLI contract, held by every command: bad input is one line and exit 2, never a traceback, and nothing
is left behind; `-h`/`--help` show every option with help text and its default.

Commands are discovered from the typer app, so a new command is held to this as soon as it is registered.
A new command adds one row to BASE_ARGS (arguments that would run it; each bad-argument row is added to
them) and, for its own failure modes, rows to SPECIFIC. See CONTRIBUTING.md.
"""

from __future__ import annotations

import json
import re
import typing

import pytest
import typer
import yaml
from typer._click import core as click  # typer vendors click: its Option, Context and types are these
from typer.core import TyperOption
from typer.testing import CliRunner

from conftest import make_tiny_llama
from personalign.cli.main import app

ROOT = typer.main.get_command(app)


def _walk(command: click.Command, path: tuple[str, ...] = ()) -> list[tuple[str, click.Command]]:
    if hasattr(command, "commands"):
        return [leaf for name, sub in command.commands.items() for leaf in _walk(sub, (*path, name))]
    return [(" ".join(path), command)]


COMMANDS = dict(_walk(ROOT))
TOY = {"name": "Zed Toy", "task": "write notes", "constraints": {"sign_off": "Cheers,\nZed"},
       "demonstrations": [{"prompt": f"Greet {n}.", "output": f"Hi {n}.\n\nCheers,\nZed"} for n in ("Al", "Bo")],
       "eval_prompts": ["Greet Gus."]}
SYNTH = ["--set", "synthetic.n_users=3", "--set", "synthetic.n_prompts=8", "--set", "synthetic.responses_per_prompt=3"]

# Arguments that would run each command (small and fast). `{name}` fills from the `files` fixture.
BASE_ARGS: dict[str, list[str]] = {
    "generate": ["--profile", "{profile}", "--method", "prompt", "--prompt", "Hi.", "--model", "{model}",
                 "--max-new-tokens", "2"],
    "compare": ["--profile", "{profile}", "--methods", "base", "--n-prompts", "1", "--model", "{model}",
                "--max-new-tokens", "2"],
    "demo": ["--methods", "base", "--quick"],
    "report": ["{run}"],
    "personalize": ["--profile", "{profile}", "--method", "sft", "--model", "{model}", "--max-steps", "1"],
    "bench": ["--dataset", "synthetic", "--methods", "vanilla", "--quick", "--no-tax", "--no-adaptation", *SYNTH],
    "eval authors": ["--dataset", "cmcc", "--methods", "base", "--authors", "0", "--n-prompts", "1", "--model",
                     "{model}", "--max-new-tokens", "2"],
    "judge validate": ["--judge", "rules", "--data", "{pairs}", "--n-boot", "10"],
    "reward train": ["--labels", "{pairs}", "--backbone", "minilm", "--max-steps", "1"],
    "data characterize": ["--dataset", "synthetic", *SYNTH],
    "eval enron": ["--methods", "base", "--quick", "--n-test", "1", "--model", "{model}", "--max-new-tokens", "2"],
    "export": ["--run", "{run}", "--format", "adapter", "--out", "{tmp}/exported"],
    "feedback export": ["--db", "{db}", "--format", "pairs"],
    "profile infer": ["--texts", "{texts}", "--name", "Zed", "--out", "{tmp}/zed.yaml"],
    "serve": ["--methods", "base", "--model", "{model}", "--port", "0"],
    "studio": ["--methods", "base", "--model", "{model}", "--db", "{tmp}/feedback.sqlite", "--port", "0"],
}

# Each command's own failure modes: (command, extra args, text the one-line error must contain).
SPECIFIC: list[tuple[str, list[str], str]] = [
    ("generate", ["--method", "sft"], "personalign personalize"),
    ("generate", ["--method", "promt"], "did you mean `prompt`"),
    ("compare", ["--methods", "base,promt"], "did you mean `prompt`"),
    ("demo", ["--methods", "base,promt"], "did you mean `prompt`"),
    ("bench", ["--dataset", "synth"], "did you mean `synthetic`"),
    ("bench", ["--methods", "vanila"], "did you mean `vanilla`"),
    ("judge validate", ["--data", "llmbarr"], "not a file and not a built-in set"),
    ("judge validate", ["--model", "default"], "not used by --judge rules"),
    ("judge validate", ["--judge", "oracle"], "judge"),
    ("judge validate", ["--ties"], "--ties: not used by --judge rules"),
    ("judge validate", ["--judge", "gen-rm"], "needs --rm RUN_DIR"),
    ("report", ["--out", "{userdir}"], "is a folder"),
    ("report", ["{bench_run}"], "a `bench` run"),
    ("report", ["--out", "{userdir}/x.txt"], "ending in .html"),
    ("personalize", ["--pairs", "{pairs}"], "--pairs: not used by --method sft"),
    ("personalize", ["--method", "prompt"], "prompting methods need no training"),
    ("eval authors", ["--dataset", "cmcx"], "cmcx"),
    ("reward train", ["--labels", "nope"], "not a file and not a built-in set"),
    ("reward train", ["--labels", "{pairs}", "--profile", "{profile}"], "--profile: not used with --labels"),
    ("reward train", ["--kind", "gen-rm"], "chat LM backbone"),
    ("reward train", ["--kind", "judge"], "kind"),
    ("data characterize", ["--dataset", "nope"], "nope"),
    ("export", ["--out", "{userdir}"], "folder of other files"),
    ("profile infer", ["--texts", "{tmp}/nowhere.jsonl"], "nowhere.jsonl"),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory, chat_tokenizer) -> dict[str, str]:
    root = tmp_path_factory.mktemp("contract")
    model = root / "tiny"
    make_tiny_llama(chat_tokenizer, hidden=16, layers=1).save_pretrained(model)
    chat_tokenizer.save_pretrained(model)
    (root / "toy.yaml").write_text(yaml.safe_dump(TOY))
    pairs = root / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"p{i}", "chosen": "good", "rejected": "bad"}) + "\n"
                             for i in range(4)))
    run = root / "finished-run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"command": "compare", "status": "finished"}))
    (run / "outputs.jsonl").write_text(json.dumps({"prompt": "p", "method": "base", "sample": 0, "output": "o"})
                                       + "\n")
    (root / "texts.jsonl").write_text("".join(json.dumps({"subject": f"Plan {i}", "body": f"Hi Sam,\n\nWeek {i} "
                                                         "is ready.\n\nBest,\nZed"}) + "\n" for i in range(12)))
    from personalign.feedback.db import FeedbackDB

    FeedbackDB(root / "feedback.sqlite")  # an empty, valid database
    bench = root / "bench-run"
    bench.mkdir()
    (bench / "run.json").write_text(json.dumps({"command": "bench", "status": "finished"}))
    (bench / "metrics.jsonl").write_text(json.dumps({"method": "vanilla", "mean_acc": 0.5}) + "\n")
    (root / "bad.yaml").write_text("methods: [base\nseed: 2\n")
    (root / "unknown.yaml").write_text("definitely_not_a_field: 1\n")
    return {"model": str(model), "profile": str(root / "toy.yaml"), "pairs": str(pairs), "run": str(run),
            "bench_run": str(bench),
            "texts": str(root / "texts.jsonl"), "db": str(root / "feedback.sqlite"), "bad_yaml": str(root / "bad.yaml"),
            "unknown_yaml": str(root / "unknown.yaml")}


def _options(command: click.Command) -> dict[str, TyperOption]:
    return {opt: p for p in command.params if isinstance(p, TyperOption) for opt in p.opts}


def _generic_rows(name: str) -> list[tuple[str, list[str], str | None]]:
    """Bad arguments every command with the option must reject (label, args, text the error contains)."""
    options = _options(COMMANDS[name])
    rows: list[tuple[str, list[str], str | None]] = [("unknown flag", ["--no-such-flag"], "No such option")]
    if "--config" in options:
        rows += [("missing config", ["--config", "{tmp}/nowhere.yaml"], "nowhere.yaml"),
                 ("yaml syntax", ["--config", "{bad_yaml}"], r"bad\.yaml:\d+:\d+: invalid YAML"),
                 ("unknown key", ["--config", "{unknown_yaml}"], "definitely_not_a_field: unknown key")]
    if "--device" in options:
        rows.append(("device gpu", ["--device", "gpu"], "gpu"))
    if "--out" in options:
        rows.append(("out is a user folder", ["--out", "{userdir}"], "{userdir}"))
    if "--resume" in options:
        rows.append(("resume nothing", ["--resume", "--out", "{tmp}/never-ran"], "no run to resume"))
    if "--wandb" in options:
        rows.append(("wandb without login", ["--wandb", "proj"], "wandb login"))
    func = getattr(COMMANDS[name].callback, "__wrapped__", COMMANDS[name].callback)
    hints = typing.get_type_hints(func)
    numeric = [o for o, p in options.items() if o.startswith("--")
               and {int, float} & {hints.get(p.name), *typing.get_args(hints.get(p.name))}]
    if numeric:
        rows.append(("not a number", [numeric[0], "many"], None))
    return rows


CASES = [(name, label, args, expect) for name in COMMANDS if name in BASE_ARGS
         for label, args, expect in _generic_rows(name)] + [(n, "specific", a, e) for n, a, e in SPECIFIC]


def test_every_command_has_a_row():
    missing = sorted(set(COMMANDS) - set(BASE_ARGS))
    assert not missing, f"add BASE_ARGS rows in tests/cli/test_contract.py for {missing} (see CONTRIBUTING.md)"
    assert {n for n, _, _ in SPECIFIC} <= set(COMMANDS)


@pytest.mark.parametrize(("name", "label", "args", "expect"), CASES, ids=[f"{c[0]}: {c[1]}" for c in CASES])
def test_bad_arguments_exit_2_with_one_line_and_leave_nothing(name, label, args, expect, files, tmp_path,
                                                             monkeypatch):
    userdir = tmp_path / "my-notes"
    userdir.mkdir()
    (userdir / "config.yaml").write_text("my own file\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PERSONALIGN_RUNS", str(tmp_path / "runs"))
    for var in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    import uvicorn

    def no_server(*_args, **_kwargs):  # a row that gets as far as serving has failed: fail fast, never block
        raise AssertionError("the command started a server")

    monkeypatch.setattr(uvicorn, "run", no_server)
    monkeypatch.setattr(uvicorn.Server, "run", no_server)
    values = {**files, "tmp": str(tmp_path), "userdir": str(userdir)}
    fill = lambda a: a.format(**values)  # noqa: E731 - template filler
    base = [fill(a) for a in BASE_ARGS[name]]
    extra = [fill(a) for a in args]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))

    result = CliRunner().invoke(app, [*name.split(), *base, *extra])

    assert result.exit_code == 2, (result.output, result.exception)
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit | None), result.output
    if expect:
        assert re.search(expect if label in ("yaml syntax",) else re.escape(fill(expect)), result.output), \
            result.output
    if label != "unknown flag" and not label.startswith("not a number"):
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert (userdir / "config.yaml").read_text() == "my own file\n"
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing left behind


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_shows_every_option_with_text_and_default(name):
    for flag in ("--help", "-h"):
        result = CliRunner().invoke(app, [*name.split(), flag], env={"COLUMNS": "400"})
        assert result.exit_code == 0, result.output
    assert "[default:" in result.output
    command = COMMANDS[name]
    assert command.help, f"{name}: no summary"
    command.fill_defaults()  # what --help does before rendering
    for param in command.params:
        if not isinstance(param, TyperOption) or param.name == "help":
            continue
        assert param.help, f"{name} {param.opts[0]}: no help text"
        shown = (isinstance(param.show_default, str) and param.show_default) or (
            param.show_default is True and param.default is not None)
        assert shown or "[required]" in param.help, f"{name} {param.opts[0]}: help does not show its default"


def test_version_and_short_help():
    from personalign import __version__

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output
    assert CliRunner().invoke(app, ["-h"]).exit_code == 0


def test_user_errors_are_caught_by_kind_and_bugs_keep_their_traceback():
    import torch

    from personalign.cli.common import user_error_message

    replaced = IsADirectoryError(21, "Is a directory", "/tmp/.report.html.x.tmp", None, "/tmp/report.html")
    assert user_error_message(replaced) == "/tmp/report.html: Is a directory; check the path"
    try:
        torch.device("gpu")
    except RuntimeError as exc:
        assert user_error_message(exc).startswith("device: ")
    assert user_error_message(MemoryError()).startswith("out of memory")
    for bug in (KeyError("x"), TypeError("unsupported operand"), RuntimeError("shape mismatch")):
        assert user_error_message(bug) is None  # a bug is not the user's to fix: it keeps its traceback
