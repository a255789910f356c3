"""The embedded default model: converted once from the packaged GGUF, then an ordinary HF model."""

from __future__ import annotations

import json

import pytest

from personalign.backends.default_model import MARKER, converted_dir, ensure_default_model, locate_gguf


@pytest.mark.slow
def test_conversion_is_a_plain_hf_folder_matching_the_gguf(default_model_dir):
    assert default_model_dir == converted_dir(locate_gguf())
    marker = json.loads((default_model_dir / MARKER).read_text())
    assert marker["probe_max_abs_logit_diff"] <= 1e-4
    config = json.loads((default_model_dir / "config.json").read_text())
    assert "quantization_config" not in config
    assert (default_model_dir / "model.safetensors").is_file()
    assert "im_start" in (default_model_dir / "tokenizer_config.json").read_text() or (
        default_model_dir / "chat_template.jinja"
    ).is_file()
    before = (default_model_dir / MARKER).stat().st_mtime_ns
    assert ensure_default_model(progress=False) == default_model_dir
    assert (default_model_dir / MARKER).stat().st_mtime_ns == before  # cached: no second conversion


@pytest.mark.slow
def test_default_model_generates_16_tokens(default_model_dir):
    from personalign.backends.hf import HFBackend
    from personalign.config import ModelConfig, SamplingConfig

    backend = HFBackend(ModelConfig(device="cpu"))
    conv = [{"role": "user", "content": "Write one sentence thanking a colleague for their help."}]
    first = backend.generate([conv], SamplingConfig(temperature=0.0, max_new_tokens=16))[0][0]
    again = backend.generate([conv], SamplingConfig(temperature=0.0, max_new_tokens=16))[0][0]
    assert first == again
    assert len(backend.tokenizer(first, add_special_tokens=False)["input_ids"]) <= 16
    assert any(word in first.lower() for word in ("thank", "grateful", "appreciate")), first
