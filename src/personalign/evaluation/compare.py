"""Side-by-side comparison: every method generates for the same prompts; rules score them all.

This is the core loop behind `personalign compare` and `personalign demo`. Outputs and metrics go
into one run dir; a finished method's outputs are reused on a rerun of the same run dir (resume).
No method or run is scored on a prompt it trained on or retrieved from (`personalign.splits`): a
`--runs` dir that did, or that recorded no training data, is refused before anything is generated.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import Field

from personalign.backends.base import GenerationBackend
from personalign.backends.registry import build_backend
from personalign.config import Config, ModelConfig, SamplingConfig
from personalign.errors import PersonalignError
from personalign.judges.rules import compliance, count_words
from personalign.methods.base import Personalizer
from personalign.methods.prompted import reuse_trained
from personalign.methods.spec import PROMPT_SUFFIX, parse_spec, resolve_personalizer
from personalign.profiles import Profile, load_profile
from personalign.runs import RunDir, seed_everything
from personalign.splits import assert_disjoint

EXAMPLE_PROFILE = Path(__file__).resolve().parents[3] / "configs" / "profiles" / "example.yaml"


class CompareConfig(Config):
    """Resolved config of one comparison run (written to the run dir as config.yaml)."""

    profile: str = Field(str(EXAMPLE_PROFILE), description="profile YAML/JSON")
    methods: list[str] = Field(default_factory=lambda: ["base", "prompt", "prompt-rag"])
    runs: list[str] = Field(default_factory=list, description="trained run dirs to compare beside the methods")
    n_prompts: int | None = Field(None, ge=1, description="first K eval prompts; None = all")
    out: str | None = Field(None, description="the run dir to write (default: runs/<name>-<UTC time>)")
    name: str = Field("compare", description="prefix of the default run dir's name")
    resume: bool = Field(False, description="continue the run in `out`: methods it finished are reused")
    quick: bool = Field(False, description="use each method's quick settings (CPU-friendly)")
    model: ModelConfig = Field(default_factory=ModelConfig)
    # A mild repetition penalty: without it the 135M default model loops on names and greetings
    # ("Aisha, Ben, Aisha, ...") under long few-shot prompts; every method is sampled the same way.
    sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig(repetition_penalty=1.15))
    method_configs: dict[str, dict[str, Any]] = Field(default_factory=dict, description="per-method config fields")
    wandb: str | None = Field(None, description="wandb project; WANDB_MODE=offline works without network")


def method_summary(profile: Profile, texts: list[str]) -> dict[str, Any]:
    report = compliance(texts, profile.constraints)
    words = [count_words(t) for t in texts]
    return {**report.as_dict(), "mean_words": sum(words) / max(1, len(words))}


def _fit_method(
    name: str, config: CompareConfig, profile: Profile, shared: GenerationBackend | None, run: RunDir
) -> Personalizer:
    # Trainable methods get their own backend (resolve_personalizer does that) and a sub run dir.
    sub = RunDir(run.path / "methods" / name) if _is_trainable(name) else None
    return resolve_personalizer(name, profile=profile, model=config.model, quick=config.quick, run_dir=sub,
                                method_config=config.method_configs.get(name), backend=shared,
                                seed=config.sampling.seed)


def run_comparison(
    config: CompareConfig, progress: bool = True, command: str = "compare", echo: Callable[[str], None] | None = None,
) -> tuple[RunDir, dict[str, dict[str, Any]]]:
    """Generate for the profile's eval prompts with every method and trained run; score with rules."""
    profile = load_profile(config.profile)
    prompts = [p.prompt for p in profile.eval_prompts][: config.n_prompts]
    if not prompts:
        raise PersonalignError(f"{config.profile}: field 'eval_prompts' is empty; add held-out prompts to compare on")
    for spec in [*config.runs, *config.methods]:
        parsed = parse_spec(spec)  # a bad run dir or a typo'd method fails here, before any run dir or model exists
        if parsed.run is not None:  # a trained run that saw an eval prompt is refused here too
            assert_disjoint(parsed.run, prompts, who=f"run {parsed.run}")
    run = RunDir.open(config.out, command, config, resume=config.resume, name=config.name,
                      wandb_project=config.wandb)
    seed_everything(config.sampling.seed)
    shared: GenerationBackend | None = None
    run.write_env(config.sampling.seed, device=_device_used(config.model.device))
    done = {row["method"] for row in run.outputs}
    summary: dict[str, dict[str, Any]] = {}
    for row in run.metrics:
        if row.get("kind") == "method_summary":
            summary[row["method"]] = {k: v for k, v in row.items() if k not in ("time", "kind", "method")}

    labels = [*config.methods, *[f"run:{Path(r).name}" for r in config.runs]]
    fitted: dict[str, Personalizer] = {}  # trained this invocation: `X+prompt` reuses `X`'s adapter
    for label in labels:
        if label in done and label in summary:
            if echo is not None:
                echo(f"{label}: done in the earlier run, reused")
            continue  # resumed: this method finished in an earlier invocation
        start = time.perf_counter()
        if label.startswith("run:"):
            run_path = config.runs[labels.index(label) - len(config.methods)]
            personalizer = resolve_personalizer(run_path, model=config.model)
        else:
            if shared is None and not _is_trainable(label):
                shared = build_backend(config.model)
            personalizer = (reuse_trained(label, fitted, config.method_configs)
                            or _fit_method(label, config, profile, shared, run))
            if personalizer.profile is None:
                personalizer.profile = profile
            if personalizer.trainable and label + PROMPT_SUFFIX in config.methods:
                fitted[label] = personalizer  # kept (a model copy) only for the `+prompt` method that reuses it
        personalizer.assert_not_trained_on(prompts, who=f"method {label}")
        if progress:
            from personalign.cli.common import console

            console.print(f"[bold]{label}[/]: generating for {len(prompts)} prompts")
        samples = personalizer.generate(prompts, config.sampling, progress=progress)
        texts = [s[0] for s in samples]
        rows = [
            {"prompt": p, "method": label, "sample": i, "seed": config.sampling.seed, "output": out}
            for p, outs in zip(prompts, samples, strict=True)
            for i, out in enumerate(outs)
        ]
        run.add_outputs(rows)
        stats = method_summary(profile, texts) | {"seconds": round(time.perf_counter() - start, 2)}
        run.log_metrics({"kind": "method_summary", "method": label, **stats})
        summary[label] = stats
    run.write_json("summary.json", {"profile": profile.name, "prompts": prompts, "methods": summary})
    run.mark_finished()
    run.finish()
    return run, summary


def _is_trainable(name: str) -> bool:
    from personalign.methods.base import method_class

    return method_class(name).trainable


def _device_used(device: str) -> str:
    from personalign.backends.hf import resolve_device

    return str(resolve_device(device))
