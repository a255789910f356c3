"""`ditto`: Demonstration ITerated Task Optimization (Shaikh et al. 2024, "Show, Don't Tell").

1. Warm start: LoRA SFT on the demonstrations; those weights are π_ref for every DPO step.
2. For each iteration t: sample n completions per demonstration prompt from the current policy
   (temperature 1.0), store them as iteration t; build comparisons
   - expert:     demonstration ≻ sample of iteration t,
   - replay:     demonstration ≻ sample of an earlier iteration,
   - intermodel: sample of a later iteration ≻ sample of an earlier one (same prompt);
   then take K DPO steps (β = 0.05) on batches that mix the kinds by fixed fractions (0.7 / 0.2 / 0.1).
Differences from the reference code (SALT-NLP/demonstrated-feedback), all engineering: fractions and batch
size are config, not constants; a kind with no comparisons yet (iteration 0 has no replay or intermodel)
hands its share to the others, so every batch has the configured size; chat rendering goes through the
client-side renderer, so any chat model works; π_ref log-probs are computed once per sample (π_ref is a
frozen engine snapshot), and each iteration is checkpointed for `--resume`. A sample cut at the token limit
is scored without an end-of-turn token (as the reference does): only samples that ended on their own get one.
"""

from __future__ import annotations

import contextlib
import math
import random
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import Field, model_validator

from personalign.backends.base import Conversation
from personalign.config import SamplingConfig
from personalign.engines.base import ATTENTION_AND_MLP, LoraSettings, SamplingClient
from personalign.engines.render import ChatRenderer
from personalign.engines.vllm_sampler import SamplerFields, policy_sampler
from personalign.errors import ProfileError
from personalign.judges.rules import compliance, count_words
from personalign.methods.base import MethodConfig, Personalizer
from personalign.methods.sft import SFTConfig, run_sft
from personalign.methods.training import (
    TrainConfig,
    TrainingSession,
    create_engine,
    datums,
    dpo_custom_loss,
    save_trained,
    sequence_sums,
    state_dir,
    truncate_pair,
)
from personalign.profiles.schema import Profile
from personalign.runs import RunDir, seed_everything

KINDS = ("expert", "replay", "intermodel")
DEMO = -1  # "iteration" of a demonstration in a comparison source
REFERENCE_DIR = "reference"  # π_ref weights (the warm start) under sft_warmstart/


@dataclass(frozen=True)
class Comparison:
    """chosen ≻ rejected for one demonstration prompt; a source is (iteration or DEMO, sample index)."""

    prompt: int
    chosen: tuple[int, int]
    rejected: tuple[int, int]
    kind: str


class DittoConfig(MethodConfig, TrainConfig, SamplerFields):
    sft_steps: int = Field(30, ge=0, description="warm-start SFT steps on the demonstrations (gives π_ref)")
    # SFT's adapter shape (attention + MLP, bench/sweep_sft.py): the warm start must learn the format first.
    lora: LoraSettings = Field(default_factory=lambda: LoraSettings(target_modules=ATTENTION_AND_MLP))
    sft_lr: float = Field(5e-4, gt=0, description="warm-start lr (SFT's default, chosen by bench/sweep_sft.py)")
    sft_warmup_steps: int = Field(3, ge=0, description="warm-start linear warm-up steps")
    sft_stop_loss: float | None = Field(None, gt=0, description="end the warm start once the train loss is below "
                                        "this (the paper: 1.0); sft_steps stays the cap")
    iterations: int = Field(4, ge=1, description="sample → compare → train rounds")
    steps_per_iteration: int = Field(10, ge=1, description="DPO optimizer steps between resamplings (K)")
    samples_per_prompt: int = Field(4, ge=1, description="n completions sampled per demonstration prompt")
    pairs_per_step: int = Field(8, ge=1, description="comparisons per DPO batch")
    frac_expert: float = Field(0.7, ge=0, le=1)
    frac_replay: float = Field(0.2, ge=0, le=1)
    frac_intermodel: float = Field(0.1, ge=0, le=1)
    beta: float = Field(0.05, gt=0, description="DPO β (0.05 in the paper)")
    lr: float = Field(5e-5, gt=0)
    sample_temperature: float = Field(1.0, ge=0)
    sample_top_p: float = Field(1.0, gt=0, le=1)
    sample_max_new_tokens: int = Field(192, ge=1)

    @model_validator(mode="after")
    def _fractions_sum_to_one(self) -> DittoConfig:
        total = self.frac_expert + self.frac_replay + self.frac_intermodel
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ValueError(f"frac_expert + frac_replay + frac_intermodel must be 1 (got {total:g})")
        return self

    @property
    def fractions(self) -> dict[str, float]:
        return {"expert": self.frac_expert, "replay": self.frac_replay, "intermodel": self.frac_intermodel}


def build_comparisons(
    n_prompts: int, history: Mapping[int, Sequence[Sequence[str]]], current: int
) -> dict[str, list[Comparison]]:
    """Every comparison available at iteration `current` (history[t][prompt] = samples of iteration t)."""
    pools: dict[str, list[Comparison]] = {k: [] for k in KINDS}
    earlier = sorted(t for t in history if t < current)
    for p in range(n_prompts):
        for j in range(len(history[current][p])):
            pools["expert"].append(Comparison(p, (DEMO, 0), (current, j), "expert"))
        for t in earlier:
            for j in range(len(history[t][p])):
                pools["replay"].append(Comparison(p, (DEMO, 0), (t, j), "replay"))
        for a in [*earlier, current]:
            for b in (t for t in earlier if t < a):
                for i in range(len(history[a][p])):
                    for j in range(len(history[b][p])):
                        pools["intermodel"].append(Comparison(p, (a, i), (b, j), "intermodel"))
    return pools


def allocate(total: int, fractions: Mapping[str, float], available: Mapping[str, int]) -> dict[str, int]:
    """Split `total` by fractions (largest remainder); empty kinds give their share to the others, pro rata."""
    live = {k: f for k, f in fractions.items() if available.get(k, 0) > 0 and f > 0}
    if not live:
        return dict.fromkeys(fractions, 0)
    norm = sum(live.values())
    exact = {k: total * f / norm for k, f in live.items()}
    counts = {k: math.floor(v) for k, v in exact.items()}
    by_remainder = sorted(live, key=lambda k: (-(exact[k] - counts[k]), list(fractions).index(k)))
    for k in by_remainder[: total - sum(counts.values())]:
        counts[k] += 1
    return {k: counts.get(k, 0) for k in fractions}


def mix_batch(
    pools: Mapping[str, Sequence[Comparison]], total: int, fractions: Mapping[str, float], rng: random.Random
) -> list[Comparison]:
    """One batch with exactly the allocated count of each kind (drawn with replacement only if a pool is short)."""
    counts = allocate(total, fractions, {k: len(v) for k, v in pools.items()})
    batch: list[Comparison] = []
    for kind, count in counts.items():
        pool = list(pools.get(kind, []))
        if count:
            batch += rng.sample(pool, count) if count <= len(pool) else rng.choices(pool, k=count)
    return batch


class DittoMethod(Personalizer):
    name = "ditto"
    config_class: ClassVar[type[MethodConfig]] = DittoConfig
    config: DittoConfig
    trainable: ClassVar[bool] = True

    @classmethod
    def quick_overrides(cls) -> dict[str, Any]:
        # ≈2-3 minutes on 2 CPU cores with the default model (see BENCHMARKS.md, training).
        return {"sft_steps": 16, "batch_size": 4, "iterations": 2, "steps_per_iteration": 3, "samples_per_prompt": 2,
                "pairs_per_step": 4, "sample_max_new_tokens": 96, "max_length": 320}

    def conversation(self, prompt: str) -> Conversation:
        return [{"role": "user", "content": prompt}]

    def fit(self, profile: Profile, run_dir: RunDir | None = None) -> None:
        super().fit(profile, run_dir)
        cfg = self.config
        if not profile.demonstrations:
            raise ProfileError(f"profile {profile.name!r}: field 'demonstrations' is empty; DITTO needs demonstrations")
        seed_everything(cfg.seed)
        demos = profile.demonstrations
        self.record_training([d.prompt for d in demos], [d.output for d in demos])
        convs = [self.conversation(d.prompt) for d in demos]
        engine = create_engine(self, cfg.lora)
        renderer = ChatRenderer(self.backend.tokenizer)  # type: ignore[attr-defined]

        def ids(p: int, text: str, ended: bool = True) -> tuple[list[int], list[int]]:
            return truncate_pair(renderer.prompt_completion_ids(convs[p], text, ended), cfg.max_length)

        demo_pairs = [ids(p, d.output) for p, d in enumerate(demos)]
        log = run_dir.log_metrics if run_dir is not None else None

        # 1. warm start: SFT on the demonstrations → π_ref (its own checkpoints under sft_warmstart/).
        scratch = tempfile.TemporaryDirectory(prefix="ditto-") if run_dir is None else None
        sft_root = run_dir.path / "sft_warmstart" if run_dir is not None else None
        ref_dir = (sft_root if sft_root is not None else Path(scratch.name)) / REFERENCE_DIR  # type: ignore[union-attr]
        if not (cfg.resume and (ref_dir / "weights.pt").is_file()):
            shared = {k: getattr(cfg, k) for k in TrainConfig.model_fields}
            shared.update(max_steps=cfg.sft_steps, lr=cfg.sft_lr, val_fraction=0.0, synthetic={"n_keep": 0},
                          stop_below_loss=cfg.sft_stop_loss, lr_schedule="constant", warmup_ratio=None,
                          warmup_steps=cfg.sft_warmup_steps)
            if sft_root is not None and engine.is_main:
                sft_root.mkdir(exist_ok=True)
            stats = run_sft(engine, demo_pairs, SFTConfig(**shared), sft_root, log, phase="ditto_sft")
            with state_dir(engine, ref_dir) as tmp:
                engine.save_state(tmp, optimizer=False)
            if log is not None:
                log({"phase": "ditto_sft_done", **stats}, 0)
        engine.load_state(ref_dir, optimizer=False)  # π_ref's weights, and a fresh optimizer for the DPO phase
        if scratch is not None:
            scratch.cleanup()
        ref = engine.snapshot()
        demo_ref = sequence_sums(ref, demo_pairs)

        # 2. iterations of sample → compare → DPO.
        session = TrainingSession(engine, cfg, run_dir.path if run_dir is not None else None,
                                  total_steps=cfg.iterations * cfg.steps_per_iteration)
        extra = (session.restore() if cfg.resume else None) or {}
        history: dict[int, list[list[str]]] = {int(k): v for k, v in extra.get("history", {}).items()}
        # Checkpoints written before truncation was tracked: every sample counted as ended.
        ended: dict[int, list[list[bool]]] = {int(k): v for k, v in extra.get("ended", {}).items()} or {
            t: [[True] * len(s) for s in per_prompt] for t, per_prompt in history.items()}
        sample_ref: dict[int, list[list[float]]] = {int(k): v for k, v in extra.get("sample_ref", {}).items()}
        first = int(extra["iteration"]) + 1 if "iteration" in extra else 0
        started = time.perf_counter() - float(extra.get("elapsed", 0.0))
        self.iteration_stats: list[dict[str, Any]] = []
        prompt_ids = [renderer.prompt_ids(c) for c in convs]
        policy = policy_sampler(cfg, engine, self.backend, cfg.lora.r, cfg.seed)  # the engine's own, or vLLM
        with contextlib.closing(policy):
            for it in range(first, cfg.iterations):
                t0 = time.perf_counter()
                sampling = SamplingConfig(n=cfg.samples_per_prompt, temperature=cfg.sample_temperature,
                                          top_p=cfg.sample_top_p, max_new_tokens=cfg.sample_max_new_tokens,
                                          seed=cfg.seed * 7919 + it)
                policy.sync(session.step)  # vLLM: the adapter of the last optimizer phase (π_ref at iteration 0)
                decoded = [[renderer.decode(seq) for seq in per_prompt]
                           for per_prompt in policy.sample(prompt_ids, sampling, progress=True).result()]
                history[it] = [[text for text, _ in per_prompt] for per_prompt in decoded]
                ended[it] = [[done for _, done in per_prompt] for per_prompt in decoded]
                sample_ref[it] = self._reference_for(ref, history[it], ended[it], ids)
                sampling_s = time.perf_counter() - t0

                t1 = time.perf_counter()
                pools = build_comparisons(len(demos), history, it)
                rng = random.Random(cfg.seed * 1_000_003 + it)
                losses, metrics, kinds = [], Counter[str](), Counter[str]()
                for _ in range(cfg.steps_per_iteration):
                    batch = mix_batch(pools, cfg.pairs_per_step, cfg.fractions, rng)
                    kinds.update(c.kind for c in batch)

                    def pair(p: int, src: tuple[int, int]) -> tuple[list[int], list[int]]:
                        if src[0] == DEMO:
                            return demo_pairs[p]
                        return ids(p, history[src[0]][p][src[1]], ended[src[0]][p][src[1]])

                    def ref_of(p: int, src: tuple[int, int]) -> float:
                        return float(demo_ref[p]) if src[0] == DEMO else sample_ref[src[0]][p][src[1]]

                    out = session.update(
                        datums([pair(c.prompt, c.chosen) for c in batch] + [pair(c.prompt, c.rejected) for c in batch]),
                        dpo_custom_loss(torch.tensor([ref_of(c.prompt, c.chosen) for c in batch]),
                                        torch.tensor([ref_of(c.prompt, c.rejected) for c in batch]), cfg.beta),
                    )
                    losses.append(out.loss)
                    metrics.update({k: v for k, v in out.metrics.items() if k != "grad_norm"})
                samples = [s for per_prompt in history[it] for s in per_prompt]
                record = {
                    "phase": "ditto", "iteration": it, "dpo_loss": sum(losses) / len(losses),
                    "first_step_loss": losses[0],
                    **{k: v / len(losses) for k, v in metrics.items()},
                    "mean_sample_words": sum(count_words(s) for s in samples) / len(samples),
                    "mean_sample_tokens": sum(len(self.backend.tokenizer(s)["input_ids"])  # type: ignore[attr-defined]
                                              for s in samples) / len(samples),
                    "truncated_samples": sum(not e for per_prompt in ended[it] for e in per_prompt) / len(samples),
                    "sample_compliance": compliance(samples, profile.constraints).rate,
                    "pairs": dict(kinds), "pool_sizes": {k: len(v) for k, v in pools.items()},
                    "sampling_seconds": round(sampling_s, 2),
                    "optimization_seconds": round(time.perf_counter() - t1, 2),
                    "elapsed_seconds": round(time.perf_counter() - started, 2),
                }
                self.iteration_stats.append(record)
                if log is not None:
                    log(record, session.step)
                session.save({"iteration": it, "history": history, "ended": ended, "sample_ref": sample_ref,
                              "elapsed": time.perf_counter() - started})
        if run_dir is not None:
            save_trained(self, run_dir, engine)

    @staticmethod
    def _reference_for(ref: SamplingClient, samples: list[list[str]], ended: list[list[bool]],
                       ids: Any) -> list[list[float]]:
        """log π_ref of each new sample (summed over its tokens), grouped per prompt."""
        flat = [ids(p, s, e) for p, (texts, flags) in enumerate(zip(samples, ended, strict=True))
                for s, e in zip(texts, flags, strict=True)]
        values = sequence_sums(ref, flat).tolist()
        out: list[list[float]] = []
        index = 0
        for per_prompt in samples:
            out.append(values[index : index + len(per_prompt)])
            index += len(per_prompt)
        return out
