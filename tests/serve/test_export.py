"""`personalign export`: merged folders generate the run's greedy tokens; adapter and Ollama layouts."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from personalign.cli.main import app
from personalign.errors import PersonalignError
from personalign.export import ExportConfig, export_run
from personalign.methods.base import load_personalizer

PROMPTS = ["Greet Gus.", "Write to Hal about the budget review."]


def greedy_ids(model, tokenizer, prompt: str) -> list[int]:
    ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=8,
                             pad_token_id=tokenizer.pad_token_id)
    return out[0, ids.shape[1]:].tolist()


def test_merged_export_generates_the_runs_greedy_tokens(signature_runs, tmp_path, one_torch_thread):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = export_run(ExportConfig(run=str(signature_runs["zed"]), out=str(tmp_path / "merged")))
    assert (out / "model.safetensors").is_file() and (out / "generation_config.json").is_file()
    assert not (out / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template
    run = load_personalizer(signature_runs["zed"], device="cpu", dtype="fp32").backend
    for prompt in PROMPTS:
        expected = greedy_ids(run.model, run.tokenizer, prompt)
        assert greedy_ids(merged, tokenizer, prompt) == expected
        assert "Zed" in tokenizer.decode(expected)
    assert json.loads((out / "personalign.json").read_text())["method"] == "sft"


def test_adapter_export_records_its_base(signature_runs, tiny_model_dir, tmp_path):
    from peft import PeftConfig

    out = export_run(ExportConfig(run=str(signature_runs["ann"]), out=str(tmp_path / "adapter"), format="adapter"))
    assert (out / "adapter_model.safetensors").is_file()
    assert PeftConfig.from_pretrained(out).base_model_name_or_path == str(tiny_model_dir)
    assert json.loads((out / "personalign.json").read_text())["base_model"] == str(tiny_model_dir)


def test_ollama_export_writes_a_modelfile_with_the_profile_prompt(signature_runs, tmp_path):
    from personalign.methods.prompting import PromptMethod
    from personalign.methods.spec import resolve_personalizer

    plain = export_run(ExportConfig(run=str(signature_runs["zed"]), out=str(tmp_path / "o1"), format="ollama"))
    text = (plain / "Modelfile").read_text()
    assert "FROM ." in text and "<|im_start|>{{ .Role }}" in text and 'PARAMETER stop "<|im_end|>"' in text
    assert "SYSTEM" not in text and (plain / "model.safetensors").is_file()

    prompted = export_run(ExportConfig(run=f"{signature_runs['zed']}+prompt", out=str(tmp_path / "o2"),
                                       format="ollama"))
    text = (prompted / "Modelfile").read_text()
    builder = PromptMethod(resolve_personalizer(str(signature_runs["zed"])).backend)
    builder.profile = resolve_personalizer(str(signature_runs["zed"])).profile
    conversation = builder.conversation("x")
    assert f'SYSTEM """{conversation[0]["content"]}"""' in text
    assert text.count("MESSAGE user") == text.count("MESSAGE assistant") == (len(conversation) - 2) // 2 > 0


def test_export_refuses_bad_input(signature_runs, tmp_path):
    with pytest.raises(PersonalignError, match="replace the run itself"):
        export_run(ExportConfig(run=str(signature_runs["zed"]), out=str(signature_runs["zed"])))
    result = CliRunner().invoke(app, ["export", "--run", str(signature_runs["zed"]), "--out", str(tmp_path / "x"),
                                      "--format", "gguf"])
    assert result.exit_code == 2 and "format" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "x").exists()
