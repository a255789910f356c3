"""`--engine vllm`: the launch command from our runs, and (with `make vllm-venv`) vLLM serving our adapters."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from personalign.config import ModelConfig
from personalign.errors import PersonalignError
from personalign.serve.config import ServeConfig
from personalign.serve.vllm import vllm_command

VLLM_VENV = Path(__file__).resolve().parents[2] / ".venv-vllm"
VLLM_PYTHON = VLLM_VENV / "bin" / "python"


def vllm_config(tiny_model_dir, runs, **update) -> ServeConfig:
    fields = {"vllm_python": str(VLLM_PYTHON), **update}
    return ServeConfig(model=ModelConfig(model=str(tiny_model_dir), dtype="fp32"), runs=runs, engine="vllm", **fields)


def test_command_names_every_adapter_and_the_rank(signature_runs, tiny_model_dir, monkeypatch, tmp_path):
    fake = tmp_path / "python"
    fake.write_text("")
    config = vllm_config(tiny_model_dir, [str(signature_runs["zed"]), str(signature_runs["ann"])],
                         vllm_python=str(fake), api_key="k", port=8123)
    command = vllm_command(config)
    assert command[:3] == [str(fake), "-m", "vllm.entrypoints.openai.api_server"]
    assert command[command.index("--model") + 1] == str(tiny_model_dir)
    assert command[command.index("--served-model-name") + 1] == "tiny-model"
    assert command[command.index("--max-lora-rank") + 1] == "8" and "--enable-lora" in command
    modules = command[command.index("--lora-modules") + 1 : command.index("--lora-modules") + 3]
    assert modules == [f"sft-zed={(signature_runs['zed'] / 'adapter').resolve()}",
                       f"sft-ann={(signature_runs['ann'] / 'adapter').resolve()}"]
    assert command[command.index("--api-key") + 1] == "k" and command[command.index("--port") + 1] == "8123"
    with pytest.raises(PersonalignError, match=r"\+prompt. needs the hf engine"):
        vllm_command(config.model_copy(update={"runs": [f"{signature_runs['zed']}+prompt"]}))
    with pytest.raises(PersonalignError, match="not found; build the vLLM venv"):
        vllm_command(config.model_copy(update={"vllm_python": str(tmp_path / "none")}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.vllm
@pytest.mark.skipif(not (VLLM_VENV / ".installed").is_file(), reason="no .venv-vllm (build it with `make vllm-venv`)")
def test_vllm_serves_our_adapters_and_scores_like_hf(chat_tokenizer, tmp_path):
    import openai

    from conftest import make_tiny_llama

    from .conftest import train_signature_runs

    # vLLM's CPU attention needs head_dim >= 32: hidden 128 over 2 heads.
    tiny_model_dir = tmp_path / "tiny-model"
    make_tiny_llama(chat_tokenizer, hidden=128).save_pretrained(tiny_model_dir)
    chat_tokenizer.save_pretrained(tiny_model_dir)
    signature_runs = train_signature_runs(tiny_model_dir, tmp_path)

    from personalign.backends.hf import HFBackend
    from personalign.backends.openai import OpenAIBackend
    from personalign.config import OpenAISettings
    from personalign.serve import vllm

    port = free_port()
    config = vllm_config(tiny_model_dir, [str(signature_runs["zed"]), str(signature_runs["ann"])], port=port,
                         vllm_args=["--max-model-len", "512", "--gpu-memory-utilization", "0.08"])
    # Its start-up takes minutes on a loaded CPU (imports, engine core, worker): 5.5 min here at load 7-8.
    process = vllm.launch(config, ready_timeout=900)
    try:
        url = f"http://127.0.0.1:{port}/v1"
        client = openai.OpenAI(base_url=url, api_key="x", max_retries=0)
        assert {m.id for m in client.models.list().data} >= {"tiny-model", "sft-zed", "sft-ann"}
        for name, word in (("sft-zed", "Zed"), ("sft-ann", "Ann")):
            reply = client.chat.completions.create(model=name, messages=[{"role": "user", "content": "Hi."}],
                                                   temperature=0, max_tokens=6)
            assert word in reply.choices[0].message.content
        conversation = [{"role": "user", "content": "Thank Sam."}]
        remote = OpenAIBackend(ModelConfig(model="tiny-model", backend="openai",
                                           openai=OpenAISettings(base_url=url))).logprobs([conversation], ["Thanks!"])
        local = HFBackend(ModelConfig(model=str(tiny_model_dir), device="cpu", dtype="fp32")).logprobs(
            [conversation], ["Thanks!"])
        assert remote == pytest.approx(local, abs=1e-2)
    finally:
        vllm.stop(process)
