"""The real default model with a quickly trained adapter: served replies equal `generate`, and export keeps tokens."""

from __future__ import annotations

import openai
import pytest
from typer.testing import CliRunner

from personalign.cli.main import app
from personalign.config import ModelConfig
from personalign.methods.spec import resolve_personalizer
from personalign.runs import RunDir
from personalign.serve.config import ServeConfig
from personalign.serve.server import build_engine, running_server

# A few steps are enough to make the adapter differ from the base; what is tested is serving it faithfully.
QUICK = {"max_steps": 3, "batch_size": 2, "max_length": 192, "val_fraction": 0.0, "synthetic": {"n_keep": 0},
         "lora": {"r": 8}}


@pytest.mark.slow
def test_default_model_adapter_served_like_generate(example_profile_path, tmp_path):
    model = ModelConfig(device="cpu", dtype="fp32")
    run = RunDir(tmp_path / "sft-quick")
    resolve_personalizer("sft", profile=example_profile_path, model=model, method_config=QUICK, run_dir=run)
    config = ServeConfig(model=model, runs=[str(run.path), f"{run.path}+prompt"], port=0)
    prompt = "Ask Omar for an extension on the report."
    with running_server(build_engine(config), config) as url:
        client = openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=300)
        replies = {}
        for name in ("sft-quick", "sft-quick+prompt", "default"):
            replies[name] = client.chat.completions.create(
                model=name, messages=[{"role": "user", "content": prompt}], max_tokens=24, temperature=0.7,
                seed=7).choices[0].message.content
    for name, spec in (("sft-quick", str(run.path)), ("sft-quick+prompt", f"{run.path}+prompt")):
        cli = CliRunner().invoke(app, ["generate", "--run", spec, "--prompt", prompt, "--seed", "7",
                                       "--temperature", "0.7", "--max-new-tokens", "24", "--dtype", "fp32",
                                       "--device", "cpu"])
        assert cli.exit_code == 0, cli.output
        assert replies[name] == cli.stdout.strip()
    # 3 LoRA steps barely move the sampled text, so only the +prompt chat is required to differ from the bare one.
    assert replies["sft-quick+prompt"] != replies["sft-quick"] and all(replies.values())
