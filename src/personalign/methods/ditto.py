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
backend, so any chat model works; π_ref log-probs are computed once per sample (π_ref is fixed), and each
iteration is checkpointed for `--resume`.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from pydantic import Field, model_validator

from personalign.backends.base import Conversation
from personalign.config import SamplingConfig
from personalign.errors import ProfileError
from personalign.judges.rules import compliance, count_words
from personalign.methods.base import MethodConfig, Personalizer
from personalign.methods.sft import SFTConfig, run_sft
from personalign.methods.training import (
    TrainConfig,
    TrainingSession,
    apply_lora,
    dpo_batch_loss,
    load_trainable_state,
    reference_logprobs,
    require_trainable,
    save_trained,
    trainable_state,
    truncate_pair,
)
from personalign.profiles.schema import Profile
from personalign.runs import RunDir, seed_everything

KINDS = ("expert", "replay", "intermodel")
DEMO = -1  # "iteration" of a demonstration in a comparison source


@dataclass(frozen=True)
class Comparison:
    """chosen ≻ rejected for one demonstration prompt; a source is (iteration or DEMO, sample index)."""

    prompt: int
    chosen: tuple[int, int]
    rejected: tuple[int, int]
    kind: str


class DittoConfig(MethodConfig, TrainConfig):
    sft_steps: int = Field(30, ge=0, description="warm-start SFT steps on the demonstrations (gives π_ref)")
    sft_lr: float = Field(2e-4, gt=0)
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
        backend = require_trainable(self.backend, self.name)
        seed_everything(cfg.seed)
        pad_id, device = backend.tokenizer.pad_token_id, backend.device
        demos = profile.demonstrations
        convs = [self.conversation(d.prompt) for d in demos]

        def ids(p: int, text: str) -> tuple[list[int], list[int]]:
            return truncate_pair(backend.prompt_completion_ids(convs[p], text), cfg.max_length)

        demo_pairs = [ids(p, d.output) for p, d in enumerate(demos)]
        backend.model = model = apply_lora(backend.model, cfg.lora)
        log = run_dir.log_metrics if run_dir is not None else None

        # 1. warm start: SFT on the demonstrations → π_ref (its own checkpoints under sft_warmstart/).
        sft_root = run_dir.path / "sft_warmstart" if run_dir is not None else None
        if sft_root is not None:
            sft_root.mkdir(exist_ok=True)
        ref_file = sft_root / "ref_weights.pt" if sft_root is not None else None
        if cfg.resume and ref_file is not None and ref_file.is_file():
            ref_state = torch.load(ref_file)
            load_trainable_state(model, ref_state)
        else:
            shared = {k: getattr(cfg, k) for k in TrainConfig.model_fields}
            shared.update(max_steps=cfg.sft_steps, lr=cfg.sft_lr, val_fraction=0.0, synthetic={"n_keep": 0})
            sft_cfg = SFTConfig(**shared)
            stats = run_sft(backend, model, demo_pairs, sft_cfg, sft_root, log, phase="ditto_sft")
            ref_state = trainable_state(model)
            if ref_file is not None:
                torch.save(ref_state, ref_file)
            if log is not None:
                log({"phase": "ditto_sft_done", **stats}, 0)
        demo_ref = reference_logprobs(model, demo_pairs, pad_id, device, cfg.batch_size)

        # 2. iterations of sample → compare → DPO.
        session = TrainingSession(model, cfg, run_dir.path if run_dir is not None else None)
        extra = (session.restore() if cfg.resume else None) or {}
        history: dict[int, list[list[str]]] = {int(k): v for k, v in extra.get("history", {}).items()}
        sample_ref: dict[int, list[list[float]]] = {int(k): v for k, v in extra.get("sample_ref", {}).items()}
        first = int(extra["iteration"]) + 1 if "iteration" in extra else 0
        started = time.perf_counter() - float(extra.get("elapsed", 0.0))
        self.iteration_stats: list[dict[str, Any]] = []
        for it in range(first, cfg.iterations):
            t0 = time.perf_counter()
            model.eval()
            sampling = SamplingConfig(n=cfg.samples_per_prompt, temperature=cfg.sample_temperature,
                                      top_p=cfg.sample_top_p, max_new_tokens=cfg.sample_max_new_tokens,
                                      seed=cfg.seed * 7919 + it)
            history[it] = backend.generate(convs, sampling, progress=True)
            sample_ref[it] = self._reference_for(model, ref_state, history[it], ids, pad_id, device)
            sampling_s = time.perf_counter() - t0

            t1 = time.perf_counter()
            pools = build_comparisons(len(demos), history, it)
            rng = random.Random(cfg.seed * 1_000_003 + it)
            model.eval()  # dropout off in DPO, as TRL's disable_dropout: log-probs match π_ref's
            losses, metrics, kinds = [], Counter[str](), Counter[str]()
            for _ in range(cfg.steps_per_iteration):
                batch = mix_batch(pools, cfg.pairs_per_step, cfg.fractions, rng)
                kinds.update(c.kind for c in batch)

                def text(p: int, src: tuple[int, int]) -> str:
                    return demos[p].output if src[0] == DEMO else history[src[0]][p][src[1]]

                def ref(p: int, src: tuple[int, int]) -> float:
                    return float(demo_ref[p]) if src[0] == DEMO else sample_ref[src[0]][p][src[1]]

                loss, stats = dpo_batch_loss(
                    model, [ids(c.prompt, text(c.prompt, c.chosen)) for c in batch],
                    [ids(c.prompt, text(c.prompt, c.rejected)) for c in batch],
                    torch.tensor([ref(c.prompt, c.chosen) for c in batch]),
                    torch.tensor([ref(c.prompt, c.rejected) for c in batch]), cfg.beta, pad_id, device,
                )
                losses.append(session.update(loss))
                metrics.update(stats)
            model.eval()
            samples = [s for per_prompt in history[it] for s in per_prompt]
            record = {
                "phase": "ditto", "iteration": it, "dpo_loss": sum(losses) / len(losses),
                **{k: v / len(losses) for k, v in metrics.items()},
                "mean_sample_words": sum(count_words(s) for s in samples) / len(samples),
                "mean_sample_tokens": sum(len(backend.tokenizer(s)["input_ids"]) for s in samples) / len(samples),
                "sample_compliance": compliance(samples, profile.constraints).rate,
                "pairs": dict(kinds), "pool_sizes": {k: len(v) for k, v in pools.items()},
                "sampling_seconds": round(sampling_s, 2), "optimization_seconds": round(time.perf_counter() - t1, 2),
                "elapsed_seconds": round(time.perf_counter() - started, 2),
            }
            self.iteration_stats.append(record)
            if log is not None:
                log(record, session.step)
            session.save({"iteration": it, "history": history, "sample_ref": sample_ref,
                          "elapsed": time.perf_counter() - started})
        model.eval()
        if run_dir is not None:
            save_trained(self, run_dir, model)

    @staticmethod
    def _reference_for(model: Any, ref_state: dict[str, torch.Tensor], samples: list[list[str]], ids: Any,
                       pad_id: int, device: torch.device) -> list[list[float]]:
        """log π_ref of each new sample: swap the warm-start weights in, score, swap the policy back."""
        flat = [(p, s) for p, per_prompt in enumerate(samples) for s in per_prompt]
        policy = trainable_state(model)
        load_trainable_state(model, ref_state)
        values = reference_logprobs(model, [ids(p, s) for p, s in flat], pad_id, device).tolist()
        load_trainable_state(model, policy)
        out: list[list[float]] = []
        index = 0
        for per_prompt in samples:
            out.append(values[index : index + len(per_prompt)])
            index += len(per_prompt)
        return out
