"""Studio fixtures: the example profile copied to a temp folder, candidates from a tiny random model."""

from __future__ import annotations

import shutil

import pytest


@pytest.fixture
def studio_profile(tmp_path, example_profile_path):
    path = tmp_path / "profile.yaml"
    shutil.copy(example_profile_path, path)
    return path


@pytest.fixture
def make_studio(tiny_backend, studio_profile, tmp_path, one_torch_thread):
    """make_studio(**config fields) → (Studio, TestClient) with `base` and `prompt` on a tiny model."""
    from fastapi.testclient import TestClient

    from personalign.config import SamplingConfig
    from personalign.methods.base import build_personalizer
    from personalign.profiles import load_profile
    from personalign.studio.app import Studio, create_app
    from personalign.studio.config import StudioConfig
    from personalign.studio.sources import Source

    def make(**fields):
        profile = load_profile(studio_profile)
        sources = []
        for name in ("base", "prompt"):
            personalizer = build_personalizer(name, tiny_backend)
            personalizer.fit(profile)
            sources.append(Source(name, None, personalizer))
        config = StudioConfig(profile=str(studio_profile), db=str(tmp_path / "feedback.sqlite"),
                              sampling=SamplingConfig(max_new_tokens=8), **fields)
        studio = Studio(config, sources)
        return studio, TestClient(create_app(studio), follow_redirects=False)

    return make
