"""Synthetic SFT data from a profile: a teacher writes new task prompts, then in-style outputs; filters keep the good.

The teacher is any generation backend driven by the `prompt` method (rules + demonstrations in the chat).
By default it is the student model itself; a 135M teacher writes weak data, so point `teacher` at a
stronger model for real use. Filters: the profile's hard constraints (judges.rules), then near-duplicates
(embedding cosine above the threshold to a kept output or to a demonstration). Every rejection is counted
by reason, and kept rows are saved as JSONL so they can be inspected and reused (`--synthetic-data`).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from personalign.backends.base import GenerationBackend
from personalign.config import Config, ModelConfig, SamplingConfig
from personalign.errors import DataError
from personalign.io import atomic_write_json, atomic_write_jsonl, read_jsonl
from personalign.judges.rules import check_text
from personalign.profiles.schema import Profile

SYNTHETIC_FILE = "synthetic.jsonl"
REPORT_FILE = "synthetic_report.json"

# Seeded variation hints: each candidate prompt asks for a different recipient, purpose and length.
RECIPIENTS = (
    "a professor", "a recruiter", "a classmate", "a manager", "a friend", "a teaching assistant", "an alumna",
    "a club leader", "a landlord", "a conference organizer", "a team member", "a mentor",
)
PURPOSES = (
    "asking for a meeting", "saying thank you", "following up", "declining an invitation", "making an introduction",
    "requesting a favor", "confirming plans", "apologizing", "sharing good news", "asking a question",
)
LENGTHS = ("short", "medium-length", "detailed")


class SyntheticConfig(Config):
    """How much synthetic data to make and how to filter it."""

    n_keep: int = Field(16, ge=0, description="synthetic examples to keep (0 = demonstrations only)")
    n_candidates: int = Field(48, ge=0, description="prompts to generate before filtering")
    teacher: ModelConfig | None = Field(None, description="teacher model; None = the model being trained")
    prompt_temperature: float = Field(1.0, ge=0.0)
    output_temperature: float = Field(0.7, ge=0.0)
    max_new_tokens: int = Field(192, ge=8)
    dedup_threshold: float = Field(0.9, gt=0.0, le=1.0, description="drop outputs with cosine above this")
    fewshot_k: int | None = Field(None, ge=1, description="demonstrations shown to the teacher; None = all")
    embedder: str = "minilm"
    seed: int = 0


def prompt_request(profile: Profile, rng: random.Random, k: int = 3) -> list[dict[str, str]]:
    """A chat asking the teacher for one new task prompt in the spirit of the demonstrations'."""
    examples = rng.sample([d.prompt for d in profile.demonstrations], min(k, len(profile.demonstrations)))
    hint = f"{rng.choice(LENGTHS)} request, to {rng.choice(RECIPIENTS)}, {rng.choice(PURPOSES)}"
    listing = "\n".join(f"- {e}" for e in examples)
    return [
        {"role": "system", "content": f"You invent realistic requests people give an assistant to {profile.task}."},
        {"role": "user", "content": (
            f"Here are example requests:\n{listing}\n\nWrite one new request of the same kind: a {hint}. "
            "Use a concrete name and details. Reply with the request only, one line."
        )},
    ]


def clean_prompt(text: str) -> str:
    """First non-empty line, with list markers, 'Request:' labels and wrapping quotes removed."""
    for line in text.splitlines():
        line = re.sub(r"^\s*(?:(?:[-*•]|\d+[.)])\s*)+", "", line).strip()
        line = re.sub(r"^(?:new\s+)?request\s*:\s*", "", line, flags=re.IGNORECASE).strip().strip('"“”').strip()
        if line:
            return line
    return ""


def near_duplicates(vectors: np.ndarray, reference: np.ndarray, threshold: float) -> list[bool]:
    """Greedy filter: item i is a duplicate if its cosine to a reference vector or an earlier kept item > threshold."""
    kept: list[np.ndarray] = []
    flags: list[bool] = []
    for vec in vectors:
        pool = np.vstack([reference, *kept]) if (len(reference) or kept) else np.zeros((0, vectors.shape[1]))
        duplicate = bool(len(pool)) and float((pool @ vec).max()) > threshold
        flags.append(duplicate)
        if not duplicate:
            kept.append(vec[None, :])
    return flags


def generate_synthetic(
    profile: Profile, teacher: GenerationBackend, config: SyntheticConfig, progress: bool = False
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Generate, filter and return (kept rows {prompt, output, source}, report of counts per reason)."""
    from personalign.backends.embedder import get_embedder
    from personalign.methods.prompting import PromptMethod

    rng = random.Random(config.seed)
    requests = [prompt_request(profile, rng) for _ in range(config.n_candidates)]
    raw_prompts = teacher.generate(
        requests, SamplingConfig(temperature=config.prompt_temperature, max_new_tokens=64, seed=config.seed),
        progress=progress,
    ) if requests else []
    rejected: Counter[str] = Counter()
    failed_checks: Counter[str] = Counter()
    seen = {d.prompt.strip().lower() for d in profile.demonstrations}
    prompts: list[str] = []
    for samples in raw_prompts:
        prompt = clean_prompt(samples[0])
        if len(prompt.split()) < 4:
            rejected["bad_prompt"] += 1
        elif prompt.lower() in seen:
            rejected["duplicate_prompt"] += 1
        else:
            seen.add(prompt.lower())
            prompts.append(prompt)

    writer = PromptMethod(teacher, PromptMethod.config_class(k=config.fewshot_k))
    writer.fit(profile)
    outputs = [s[0] for s in writer.generate(
        prompts, SamplingConfig(temperature=config.output_temperature, max_new_tokens=config.max_new_tokens,
                                seed=config.seed + 1), progress=progress,
    )] if prompts else []

    passing: list[tuple[str, str]] = []
    for prompt, output in zip(prompts, outputs, strict=True):
        failures = [c.name for c in check_text(output, profile.constraints) if not c.passed]
        if not output.strip():
            rejected["empty_output"] += 1
        elif failures:
            rejected[f"constraint:{failures[0]}"] += 1  # counted once, under its first failing check
            failed_checks.update(failures)
        else:
            passing.append((prompt, output))

    kept: list[dict[str, Any]] = []
    if passing:
        embedder = get_embedder(config.embedder)
        vectors = embedder.encode([o for _, o in passing])
        reference = embedder.encode([d.output for d in profile.demonstrations])
        for (prompt, output), dup in zip(passing, near_duplicates(vectors, reference, config.dedup_threshold),
                                         strict=True):
            if dup:
                rejected["near_duplicate"] += 1
            elif len(kept) >= config.n_keep:
                rejected["over_n_keep"] += 1
            else:
                kept.append({"prompt": prompt, "output": output, "source": "synthetic"})
    report = {
        "generated": config.n_candidates,
        "rejected": dict(sorted(rejected.items())),
        "failed_checks": dict(sorted(failed_checks.items())),
        "kept": len(kept),
        "teacher": teacher.describe(),
    }
    return kept, report


def save_synthetic(folder: Path, rows: Sequence[dict[str, Any]], report: dict[str, Any]) -> Path:
    atomic_write_json(folder / REPORT_FILE, report)
    return atomic_write_jsonl(folder / SYNTHETIC_FILE, rows)


def load_synthetic(path: str | Path) -> list[dict[str, Any]]:
    """Read a synthetic-data JSONL (rows need non-empty `prompt` and `output`)."""
    rows = read_jsonl(path)
    for lineno, row in enumerate(rows, start=1):
        for key in ("prompt", "output"):
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise DataError(
                    f"{path}: row {lineno}: field {key!r} missing or empty; each row needs prompt and output"
                )
    return rows
