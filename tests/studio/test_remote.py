"""The studio in front of a remote OpenAI-compatible server: `personalign serve` on loopback with a tiny model."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from conftest import make_tiny_llama
from personalign.config import ModelConfig, OpenAISettings, SamplingConfig
from personalign.profiles import load_profile
from personalign.serve.config import ServeConfig
from personalign.serve.server import build_engine, running_server
from personalign.studio.app import Studio, create_app
from personalign.studio.config import StudioConfig
from personalign.studio.sources import build_sources


def test_studio_generates_through_the_openai_backend(tmp_path, chat_tokenizer, studio_profile, one_torch_thread,
                                                     monkeypatch):
    path = tmp_path / "tiny"
    make_tiny_llama(chat_tokenizer, seed=4).save_pretrained(path)
    chat_tokenizer.save_pretrained(path)
    local = ModelConfig(model=str(path), device="cpu", dtype="fp32")
    serve_config = ServeConfig(model=local, port=0, batch_window_ms=10, api_key="k-9", shutdown_timeout_s=5)
    monkeypatch.setenv("STUDIO_TEST_KEY", "k-9")
    sampling = SamplingConfig(max_new_tokens=8)
    with running_server(build_engine(serve_config), serve_config) as url:
        remote = ModelConfig(model="tiny", backend="openai",
                             openai=OpenAISettings(base_url=url, api_key_env="STUDIO_TEST_KEY", max_retries=0))
        config = StudioConfig(profile=str(studio_profile), db=str(tmp_path / "f.sqlite"), methods=["base", "prompt"],
                              model=remote, sampling=sampling)
        profile = load_profile(studio_profile)
        studio = Studio(config, build_sources(profile, config.methods, [], remote))
        client = TestClient(create_app(studio), follow_redirects=False)
        page = client.get("/compare")
        assert page.status_code == 200
        rnd = studio.db.get_round(re.search(r'name="round_id" value="(\w+)"', page.text).group(1))
        studio.close()
    # Each candidate is what the same method and seed give on the local engine: the text came from the server.
    by_method = {s.method: s for s in build_sources(profile, ["base", "prompt"], [], local)}
    for candidate in (rnd.x, rnd.y):
        again = by_method[candidate.method].generate(rnd.prompt, sampling, candidate.seed)
        assert candidate.text == again.text and candidate.text.strip()
