"""Specs → personalizers: method names, run dirs, `+prompt`, and the `sft+prompt` method."""

from __future__ import annotations

import pytest
import torch

from conftest import make_tiny_llama
from personalign.backends.hf import HFBackend
from personalign.config import ModelConfig
from personalign.errors import PersonalignError
from personalign.methods.prompted import PromptedRun, SFTPromptMethod
from personalign.methods.prompting import PromptMethod
from personalign.methods.sft import SFTMethod
from personalign.methods.spec import parse_spec, resolve_personalizer
from personalign.profiles.loading import parse_profile
from personalign.runs import RunDir

QUICK = {"max_steps": 3, "lr": 1e-2, "batch_size": 2, "val_fraction": 0.0, "synthetic": {"n_keep": 0},
         "lora": {"r": 4, "dropout": 0.0}}


def toy_profile():
    return parse_profile({
        "name": "Zed Toy", "task": "write notes", "rules": ["Be brief."],
        "demonstrations": [{"prompt": f"Greet {n}.", "output": f"Hi {n}.\n\nCheers,\nZed"} for n in ("Al", "Bo", "Cy")],
    })


@pytest.fixture
def tiny_model(chat_tokenizer, tmp_path) -> ModelConfig:
    path = tmp_path / "tiny-model"
    make_tiny_llama(chat_tokenizer).save_pretrained(path)
    chat_tokenizer.save_pretrained(path)
    return ModelConfig(model=str(path), device="cpu", dtype="fp32")


def adapter_weights(personalizer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in personalizer.backend.model.named_parameters() if "lora_" in k}


def test_parse_spec_forms(tmp_path):
    assert parse_spec("prompt").method == "prompt"
    assert parse_spec("sft+prompt").method == "sft+prompt" and parse_spec("sft+prompt").trainable
    run = tmp_path / "sft-run"
    run.mkdir()
    with pytest.raises(PersonalignError, match=r"no method\.json"):
        parse_spec(str(run))
    (run / "method.json").write_text("{}")
    assert parse_spec(str(run)).run == run and not parse_spec(str(run)).prompted
    prompted = parse_spec(f"{run}+prompt")
    assert prompted.run == run and prompted.prompted and prompted.label == "sft-run+prompt"
    with pytest.raises(PersonalignError, match="unknown method or run dir 'nope'"):
        parse_spec("nope")


def test_bad_method_config_fails_before_any_model_loads():
    def factory(_model):
        raise AssertionError("a model was loaded before the config was checked")

    with pytest.raises(PersonalignError, match=r"config of method 'prompt'.*k"):
        resolve_personalizer("prompt", profile=toy_profile(), method_config={"k": -1}, backend_factory=factory)
    with pytest.raises(PersonalignError, match="profile is required"):
        resolve_personalizer("prompt", backend_factory=factory)


def test_sft_prompt_trains_like_sft_and_generates_with_the_prompt_conversation(tiny_model, tmp_path):
    profile = toy_profile()
    plain = resolve_personalizer("sft", profile=profile, model=tiny_model, method_config=QUICK,
                                 run_dir=RunDir(tmp_path / "sft"))
    prompted = resolve_personalizer("sft+prompt", profile=profile, model=tiny_model, method_config=QUICK,
                                    run_dir=RunDir(tmp_path / "sftp"))
    assert isinstance(plain, SFTMethod) and isinstance(prompted, SFTPromptMethod)
    # Same data, same seed, same start: the adapter is trained on the bare prompt exactly like plain sft's.
    a, b = adapter_weights(plain), adapter_weights(prompted)
    assert a.keys() == b.keys() and a and all(torch.equal(a[k], b[k]) for k in a)
    builder = PromptMethod(prompted.backend)
    builder.profile = profile
    assert prompted.conversation("Greet Di.") == builder.conversation("Greet Di.")
    assert prompted.conversation("Greet Di.")[0]["role"] == "system"
    assert plain.conversation("Greet Di.") == [{"role": "user", "content": "Greet Di."}]
    assert (tmp_path / "sftp" / "config.yaml").is_file() and (tmp_path / "sftp" / "env.json").is_file()

    # The run dir reloads as the same method; a plain sft run dir + `+prompt` builds the same conversation.
    reloaded = resolve_personalizer(str(tmp_path / "sftp"))
    assert isinstance(reloaded, SFTPromptMethod)
    assert reloaded.conversation("Greet Di.") == builder.conversation("Greet Di.")
    run_prompted = resolve_personalizer(f"{tmp_path / 'sft'}+prompt")
    assert isinstance(run_prompted, PromptedRun)
    assert run_prompted.conversation("Greet Di.") == builder.conversation("Greet Di.")
    assert isinstance(run_prompted.backend, HFBackend) and run_prompted.backend.config.adapter
    reloaded_weights = adapter_weights(run_prompted)
    assert all(torch.equal(reloaded_weights[k], a[k]) for k in a)


def test_reuse_trained_wraps_the_trained_adapter_only_when_training_fields_match(tiny_model, tmp_path):
    from personalign.methods.prompted import reuse_trained

    profile = toy_profile()
    plain = resolve_personalizer("sft", profile=profile, model=tiny_model, method_config=QUICK,
                                 run_dir=RunDir(tmp_path / "sft"))
    fitted = {"sft": plain}
    same = {"sft": QUICK, "sft+prompt": {**QUICK, "prompt": {"k": 1}}}
    reused = reuse_trained("sft+prompt", fitted, same)
    assert isinstance(reused, PromptedRun) and reused.name == "sft+prompt" and reused.inner is plain
    assert reused.config.k == 1  # the `prompt` field still shapes generation
    builder = PromptMethod(plain.backend, reused.config)
    builder.profile = profile
    assert reused.conversation("Greet Di.") == builder.conversation("Greet Di.")
    # a different training field (or no trained base) means its own training
    assert reuse_trained("sft+prompt", fitted, {"sft": QUICK, "sft+prompt": {**QUICK, "lr": 1e-3}}) is None
    assert reuse_trained("ditto+prompt", fitted, {}) is None
    assert reuse_trained("sft", fitted, same) is None


def test_compare_trains_sft_once_for_sft_and_sft_prompt(tiny_model, tmp_path):
    import yaml

    from personalign.evaluation.compare import CompareConfig, run_comparison

    data = toy_profile().model_dump(mode="json", exclude_none=True) | {"eval_prompts": [{"prompt": "Greet Di."}]}
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    config = CompareConfig(profile=str(path), methods=["sft", "sft+prompt"], model=tiny_model,
                           method_configs={"sft": QUICK, "sft+prompt": QUICK}, out=str(tmp_path / "cmp"))
    config.sampling.max_new_tokens = 4
    run, summary = run_comparison(config, progress=False)
    assert set(summary) == {"sft", "sft+prompt"}
    trained = sorted(p.name for p in (run.path / "methods").iterdir())
    assert trained == ["sft"]  # sft+prompt generated with sft's adapter instead of training a second one
