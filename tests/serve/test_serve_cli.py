"""`personalign serve` refuses bad input with one line and exit 2, before any model loads."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from personalign.cli.main import app

PROFILE = str(Path(__file__).resolve().parents[2] / "configs" / "profiles" / "example.yaml")


@pytest.mark.parametrize(("args", "message"), [
    (["--host", "0.0.0.0"], "needs --api-key"),
    (["--engine", "tgi"], "engine"),
    (["--methods", "prompt"], "--methods needs --profile"),
    (["--runs", "no/such/run"], "unknown method or run dir"),
    (["--methods", "sft", "--profile", PROFILE], "served from its run dir"),
    (["--engine", "vllm", "--methods", "prompt", "--profile", PROFILE], "trained runs only"),
])
def test_bad_serve_arguments_exit_2_with_one_line(args, message, monkeypatch):
    import personalign.serve.engine as engine

    monkeypatch.setattr(engine.HFBackend, "__init__", lambda *a, **k: pytest.fail("a model was loaded"))
    result = CliRunner().invoke(app, ["serve", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
