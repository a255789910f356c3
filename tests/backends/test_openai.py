"""The `openai` backend against a real local counterpart: `personalign serve` on loopback with a tiny model."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import make_tiny_llama
from personalign.backends.hf import HFBackend
from personalign.backends.registry import build_backend
from personalign.config import ModelConfig, OpenAISettings, SamplingConfig
from personalign.errors import PersonalignError
from personalign.serve.config import ServeConfig
from personalign.serve.server import build_engine, running_server

CONVERSATIONS = [
    [{"role": "user", "content": "Thank Sam for the intro."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Ask Jo for the file."}],
]


@pytest.fixture(scope="module")
def served(chat_tokenizer, tmp_path_factory):
    import torch

    path = tmp_path_factory.mktemp("openai") / "tiny"
    make_tiny_llama(chat_tokenizer, seed=3).save_pretrained(path)
    chat_tokenizer.save_pretrained(path)
    model = ModelConfig(model=str(path), device="cpu", dtype="fp32")
    config = ServeConfig(model=model, port=0, batch_window_ms=20, api_key="k-123", shutdown_timeout_s=5)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    engine = build_engine(config)
    try:
        with running_server(engine, config) as url:
            yield engine, url, model
    finally:
        torch.set_num_threads(threads)


def backend_for(url: str, monkeypatch, **settings) -> object:
    monkeypatch.setenv("TEST_SERVE_KEY", "k-123")
    config = ModelConfig(model="tiny", backend="openai",
                         openai=OpenAISettings(base_url=url, api_key_env="TEST_SERVE_KEY", **settings))
    return build_backend(config)


def test_generate_matches_the_local_backend_per_seeded_request(served, monkeypatch):
    _engine, url, model = served
    remote = backend_for(url, monkeypatch)
    local = HFBackend(model)
    sampling = SamplingConfig(n=2, max_new_tokens=8, seed=4)
    got = remote.generate(CONVERSATIONS, sampling)
    assert [len(g) for g in got] == [2, 2]
    for conversation, samples in zip(CONVERSATIONS, got, strict=True):
        assert samples == local.generate([conversation], sampling)[0]  # each request is seeded on its own


def test_logprobs_of_given_completions_match_the_local_backend(served, monkeypatch):
    _engine, url, model = served
    completions = ["Thanks so much, Sam!", "Could you send it today?"]
    remote = backend_for(url, monkeypatch).logprobs(CONVERSATIONS, completions)
    local = HFBackend(model).logprobs(CONVERSATIONS, completions)
    assert remote == pytest.approx(local, abs=1e-3)
    assert remote[0] != pytest.approx(backend_for(url, monkeypatch).logprobs(CONVERSATIONS[:1], ["No."])[0], abs=1e-2)


def test_wrong_key_unknown_model_and_no_server_are_one_line_errors(served, monkeypatch):
    _engine, url, _model = served
    monkeypatch.setenv("WRONG_KEY", "nope")
    wrong = build_backend(ModelConfig(model="tiny", backend="openai",
                                      openai=OpenAISettings(base_url=url, api_key_env="WRONG_KEY", max_retries=0)))
    with pytest.raises(PersonalignError, match="HTTP 401"):
        wrong.generate(CONVERSATIONS[:1], SamplingConfig(max_new_tokens=2))
    with pytest.raises(PersonalignError, match="HTTP 404: model 'nope'"):
        backend = backend_for(url, monkeypatch)
        backend.config = backend.config.model_copy(update={"model": "nope"})
        backend.generate(CONVERSATIONS[:1], SamplingConfig(max_new_tokens=2))
    dead = build_backend(ModelConfig(model="x", backend="openai",
                                     openai=OpenAISettings(base_url="http://127.0.0.1:9/v1", max_retries=0)))
    with pytest.raises(PersonalignError, match="cannot reach the server"):
        dead.generate(CONVERSATIONS[:1], SamplingConfig(max_new_tokens=2))


def test_concurrency_limit_and_retry_after_429(served, monkeypatch):
    engine, url, _model = served
    gate = threading.Event()
    engine.control(gate.wait)  # hold the worker: requests stay queued
    backend = backend_for(url, monkeypatch, concurrency=2)
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(backend.generate, CONVERSATIONS * 2, SamplingConfig(max_new_tokens=2))
        while engine.pending < 2:
            time.sleep(0.01)
        time.sleep(0.3)
        assert engine.pending == 2  # never more than `concurrency` in flight
        gate.set()
        assert len(future.result()) == 4

    # Overload: the queue holds one request; the second gets 429 + Retry-After 1 and the client retries it.
    gate = threading.Event()
    engine.control(gate.wait)
    old, engine.max_queue = engine.max_queue, 1
    rejected = engine.rejected
    try:
        with ThreadPoolExecutor(1) as pool:
            future = pool.submit(backend.generate, CONVERSATIONS, SamplingConfig(max_new_tokens=2))
            threading.Timer(0.5, gate.set).start()
            started = time.monotonic()
            assert len(future.result()) == 2
            assert engine.rejected > rejected  # one request was refused with 429 ...
            assert time.monotonic() - started >= 1.0  # ... waited Retry-After (1 s) and was sent again
    finally:
        engine.max_queue = old
        gate.set()
