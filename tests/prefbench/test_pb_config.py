"""Bench config: flags and YAML map to the same typed fields; quick mode; fingerprints for resuming."""

from __future__ import annotations

from pathlib import Path

import pytest

from personalign.config import resolve_config
from personalign.errors import PersonalignError
from personalign.prefbench.config import BenchConfig, parse_set_options


def test_yaml_then_flags_then_set(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("dataset: [synthetic]\nmethods: [vanilla, rag]\noptions:\n  personalized:\n    alpha: 0.3\n")
    cfg = resolve_config(BenchConfig, path, {"seed": 4, **parse_set_options(["options.personalized.alpha=0.8",
                                                                             "ks=[5, 10]"])})
    assert cfg.dataset == ["synthetic"] and cfg.method_list() == ["vanilla", "rag"]
    assert cfg.options.personalized.alpha == 0.8 and cfg.seed == 4 and cfg.ks == [5, 10]


def test_bad_values_are_one_line_errors() -> None:
    with pytest.raises(PersonalignError, match="unknown method"):
        resolve_config(BenchConfig, None, {"methods": ["dpo"]})
    with pytest.raises(PersonalignError, match=r"alpha.*less than or equal to 1"):
        resolve_config(BenchConfig, None, {"options.personalized.alpha": 2})
    with pytest.raises(PersonalignError, match="expected KEY=VALUE"):
        parse_set_options(["alpha"])


def test_quick_shrinks_and_fingerprint_tracks_only_relevant_options() -> None:
    cfg = BenchConfig()
    quick = cfg.model_copy(update={"quick": True}).effective()
    assert quick.adapt_folds == 2 and quick.ks == [10, 100] and quick.options.gpo.steps < cfg.options.gpo.steps
    other = resolve_config(BenchConfig, None, {"options.personalized.alpha": 0.9})
    assert cfg.fingerprint("dsp", "vanilla") == other.fingerprint("dsp", "vanilla")
    assert cfg.fingerprint("dsp", "personalized") != other.fingerprint("dsp", "personalized")
    assert cfg.fingerprint("dsp", "vanilla") != cfg.fingerprint("synthetic", "vanilla")
    # Where results go does not change them.
    assert cfg.fingerprint("dsp", "rag") == cfg.model_copy(update={"out": "elsewhere"}).fingerprint("dsp", "rag")


def test_example_configs_load() -> None:
    folder = Path(__file__).resolve().parents[2] / "configs" / "prefbench"
    files = sorted(folder.glob("*.yaml"))
    assert files
    for path in files:
        assert resolve_config(BenchConfig, path, {}).method_list()
