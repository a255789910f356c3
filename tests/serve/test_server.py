"""`personalign serve` (hf engine) through the official `openai` client against a real server on loopback."""

from __future__ import annotations

import concurrent.futures
import threading
from pathlib import Path

import httpx
import openai
import pytest
from typer.testing import CliRunner

from personalign.config import ModelConfig
from personalign.errors import PersonalignError
from personalign.serve.config import ServeConfig
from personalign.serve.server import build_engine, running_server

from .conftest import SIGNATURES

GREEDY = {"temperature": 0, "max_tokens": 6}


@pytest.fixture(scope="module")
def one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def serve_config(tiny_model_dir, signature_runs, example_profile_path_module, tmp_path_factory) -> ServeConfig:
    return ServeConfig(
        model=ModelConfig(model=str(tiny_model_dir), device="cpu", dtype="fp32"), port=0,
        runs=[str(signature_runs["zed"]), str(signature_runs["ann"]), f"{signature_runs['zed']}+prompt"],
        profile=str(example_profile_path_module), methods=["prompt"], batch_window_ms=50,
        adapter_root=str(Path(signature_runs["zed"]).parent), shutdown_timeout_s=10,
    )


@pytest.fixture(scope="module")
def example_profile_path_module() -> Path:
    return Path(__file__).resolve().parents[2] / "configs" / "profiles" / "example.yaml"


@pytest.fixture(scope="module")
def server(serve_config, one_thread):
    engine = build_engine(serve_config)
    with running_server(engine, serve_config) as url:
        yield engine, url


@pytest.fixture
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server[1], api_key="unused", max_retries=0, timeout=120)


def ask(client: openai.OpenAI, model: str, text: str, **kwargs):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}], **kwargs)


def test_models_lists_base_methods_and_runs(client, signature_runs):
    ids = [m.id for m in client.models.list().data]
    assert ids == ["tiny-model", "example-prompt", "sft-zed", "sft-ann", "sft-zed+prompt"]


def test_round_trip_n_usage_and_routing(client):
    reply = ask(client, "sft-zed", "Write to Gus.", n=3, **GREEDY)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert all(c.message.content == "Zed Zed Zed Zed Zed Zed" for c in reply.choices)
    assert reply.choices[0].finish_reason == "length" and reply.model == "sft-zed"
    assert reply.usage.completion_tokens == 3 * 6 and reply.usage.prompt_tokens > 5
    assert ask(client, "sft-ann", "Write to Gus.", **GREEDY).choices[0].message.content.startswith("Ann Ann")


def test_seeded_reply_equals_personalign_generate(client, serve_config, signature_runs, tiny_model_dir):
    from personalign.cli.main import app

    prompt = "Thank Sam for the intro."
    for model, args in [
        ("sft-ann", ["--run", str(signature_runs["ann"])]),
        ("example-prompt", ["--profile", serve_config.profile, "--method", "prompt", "--model", str(tiny_model_dir)]),
        ("sft-zed+prompt", ["--run", f"{signature_runs['zed']}+prompt"]),
    ]:
        served = ask(client, model, prompt, temperature=0.7, max_tokens=8, seed=11).choices[0].message.content
        cli = CliRunner().invoke(app, ["generate", *args, "--prompt", prompt, "--seed", "11", "--temperature", "0.7",
                                       "--max-new-tokens", "8", "--dtype", "fp32", "--device", "cpu"])
        assert cli.exit_code == 0, cli.output
        assert served == cli.stdout.strip(), model
        assert served != ask(client, model, prompt, temperature=0.7, max_tokens=8, seed=12).choices[0].message.content


def test_streaming_sends_the_same_text_in_chunks(client):
    whole = ask(client, "sft-zed", "Hello.", seed=5, max_tokens=8).choices[0].message.content
    chunks = list(ask(client, "sft-zed", "Hello.", seed=5, max_tokens=8, stream=True))
    pieces = [c.choices[0].delta.content or "" for c in chunks]
    assert "".join(pieces) == whole and len([p for p in pieces if p]) > 1
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_stop_strings_cut_the_reply(client):
    whole = ask(client, "sft-ann", "Hello.", **GREEDY).choices[0].message.content
    assert whole.startswith("Ann Ann")
    assert ask(client, "sft-ann", "Hello.", stop=[" Ann"], **GREEDY).choices[0].message.content == "Ann"
    assert ask(client, "sft-ann", "Hello.", stop="nn", **GREEDY).choices[0].message.content == "A"


def test_error_paths_in_openai_shape(client, server):
    with pytest.raises(openai.NotFoundError) as missing:
        ask(client, "nope", "Hi.")
    assert missing.value.body["code"] == "model_not_found" and "nope" in missing.value.body["message"]
    with pytest.raises(openai.BadRequestError) as bad:
        ask(client, "sft-zed", "Hi.", temperature=5)
    assert bad.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as unknown:
        ask(client, "sft-zed", "Hi.", extra_body={"top_k": 3})
    assert unknown.value.body["param"] == "top_k" and "unknown field" in unknown.value.body["message"]
    with pytest.raises(openai.BadRequestError, match="role 'user'"):
        client.chat.completions.create(model="sft-zed", messages=[{"role": "system", "content": "x"}])


def test_api_key_401_and_bind_refusal(serve_config, one_thread):
    keyed = serve_config.model_copy(update={"api_key": "s3cret", "runs": [], "methods": [], "profile": None})
    with running_server(build_engine(keyed), keyed) as url:
        for key in ("wrong", None):
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            response = httpx.get(f"{url}/models", headers=headers)
            assert response.status_code == 401 and response.json()["error"]["type"] == "authentication_error"
        good = openai.OpenAI(base_url=url, api_key="s3cret", max_retries=0)
        assert [m.id for m in good.models.list().data] == ["tiny-model"]
        assert httpx.get(url.removesuffix("/v1") + "/health").status_code == 200
    with pytest.raises(PersonalignError, match="needs --api-key"):
        build_engine(serve_config.model_copy(update={"host": "0.0.0.0"}))


def test_overload_answers_429_with_retry_after(server, client):
    engine, url = server
    gate = threading.Event()
    blocked = engine.control(gate.wait)  # the worker is busy: requests pile up in the queue
    old = engine.max_queue
    engine.max_queue = 2
    try:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            queued = [pool.submit(ask, client, "sft-zed", "Hi.", **GREEDY) for _ in range(2)]
            while engine.pending < 2:
                threading.Event().wait(0.01)
            over = httpx.post(f"{url}/chat/completions",
                              json={"model": "sft-zed", "messages": [{"role": "user", "content": "Hi."}]})
            assert over.status_code == 429 and over.headers["Retry-After"] == "1"
            assert over.json()["error"]["type"] == "rate_limit_error"
            gate.set()
            assert all(f.result().choices[0].message.content.startswith("Zed") for f in queued)
    finally:
        gate.set()
        engine.max_queue = old
        blocked.result()


def test_mixed_adapter_batches_route_each_request_to_its_model(server, client):
    engine, _ = server
    before = len(engine.batches)
    expected = {"sft-zed": SIGNATURES["zed"], "sft-ann": SIGNATURES["ann"]}
    gate = threading.Event()
    engine.control(gate.wait)  # hold the worker so the requests below are queued together
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        names = [("sft-zed", "sft-ann", "tiny-model")[i % 3] for i in range(12)]
        futures = [pool.submit(ask, client, name, f"Note {i} to Gus.", **GREEDY) for i, name in enumerate(names)]
        while engine.pending < 12:
            threading.Event().wait(0.01)
        gate.set()
        replies = [f.result().choices[0].message.content for f in futures]
    assert engine.batches[before:] == [12]  # one generate call mixed all three models
    for name, reply in zip(names, replies, strict=True):
        # The signature words tell which model answered (the base model never says either).
        assert {w for w in ("Zed", "Ann") if w in reply} == ({expected[name].split()[0]} if name in expected
                                                             else set()), (name, reply)


def test_hot_load_only_under_the_adapter_root(server, client, signature_runs, tmp_path):
    engine, url = server
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    for path in (str(outside), "../elsewhere", "/etc"):
        refused = httpx.post(f"{url}/load_lora_adapter", json={"lora_name": "x", "lora_path": path})
        assert refused.status_code == 403, path
    loaded = httpx.post(f"{url}/load_lora_adapter",
                        json={"lora_name": "ann-hot", "lora_path": signature_runs["ann"].name + "/adapter"})
    assert loaded.status_code == 200, loaded.text
    assert ask(client, "ann-hot", "Hi.", **GREEDY).choices[0].message.content.startswith("Ann Ann")
    assert ask(client, "sft-zed", "Hi.", **GREEDY).choices[0].message.content.startswith("Zed Zed")
    assert httpx.post(f"{url}/unload_lora_adapter", json={"lora_name": "ann-hot"}).status_code == 200
    with pytest.raises(openai.NotFoundError):
        ask(client, "ann-hot", "Hi.", **GREEDY)
    assert "ann-hot" not in engine.models


def test_graceful_shutdown_finishes_in_flight_requests(serve_config, one_thread):
    config = serve_config.model_copy(update={"runs": [serve_config.runs[0]], "methods": [], "profile": None})
    engine = build_engine(config)
    gate = threading.Event()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        with running_server(engine, config) as url:
            engine.control(gate.wait)
            client = openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=60)
            future = pool.submit(ask, client, "sft-zed", "Hi.", **GREEDY)
            while engine.pending < 1:
                threading.Event().wait(0.01)
            threading.Timer(0.3, gate.set).start()  # released while the server is already shutting down
        assert future.result().choices[0].message.content.startswith("Zed")


def test_shared_backend_scores_like_the_runs_own_backend(server, signature_runs):
    from personalign.methods.base import load_personalizer

    engine, _ = server
    conversation = [{"role": "user", "content": "Greet Gus."}]
    gate = threading.Event()
    engine.control(gate.wait)  # the worker is parked: the models are not in use while this thread scores
    try:
        shared = engine.models["sft-zed"].backend.logprobs([conversation], ["Zed Zed Zed"])
    finally:
        gate.set()
    own = load_personalizer(signature_runs["zed"], device="cpu", dtype="fp32").backend.logprobs(
        [conversation], ["Zed Zed Zed"])
    assert shared == pytest.approx(own, abs=1e-4)
