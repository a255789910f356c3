"""Client side of training shared by sft/dpo/ditto/rlaif: configs, batching, the DPO loss, the step loop.

Methods are written once against the engine protocol (`personalign.engines.base`): they render chats to
token ids here on the client, and the engine (`local` by default) runs forward_backward / optim_step / sample.
Why a plain loop rather than TRL's SFTTrainer/DPOTrainer:
- tokens must come from the one client-side renderer (`engines.render`), so training sees exactly the ids
  generation sees (TRL re-applies the chat template itself), and a remote engine receives only token ids;
- DITTO resamples from the policy between optimizer steps and mixes three comparison kinds per batch,
  which TRL's trainers do not support (the reference code subclasses `Trainer` to do it);
- exact resume is simple to guarantee here: a checkpoint holds the engine's state (trainable weights,
  optimizer, RNG), the learning rate is a pure function of the step, and so is the data order.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field

from personalign.config import Config
from personalign.engines.base import (
    AdamParams,
    CustomLoss,
    Datum,
    ForwardBackwardOutput,
    LoraSettings,
    Loss,
    TokenLogprobs,
    TrainingEngine,
)
from personalign.io import atomic_dir

CHECKPOINT_DIR = "checkpoints"

class TrainConfig(Config):
    """Fields every training method shares (each method's config extends this)."""

    engine: Literal["local", "accelerate", "tinker"] = Field(
        "local", description="where training runs: local (this process, CPU or GPU) | accelerate (data-parallel "
        "over the processes `accelerate launch` started; `personalize --engine accelerate` launches them) | "
        "tinker (a Tinker-API service; model.backend: tinker)")
    lora: LoraSettings = Field(default_factory=LoraSettings)
    lr: float = Field(2e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0, description="linear warm-up from lr/warmup_steps to lr")
    warmup_ratio: float | None = Field(None, ge=0, lt=1, description="warm-up as a share of the run's steps; "
                                       "overrides warmup_steps")
    lr_schedule: Literal["constant", "cosine", "linear"] = Field(
        "constant", description="after warm-up: constant, or cosine / linear decay to 0 at the last step "
                                "(linear: transformers' default schedule)")
    grad_clip: float = Field(1.0, gt=0)
    batch_size: int = Field(4, ge=1)
    max_steps: int = Field(40, ge=0)
    max_length: int = Field(512, ge=16, description="prompt + completion tokens; longer completions are cut")
    checkpoint_every: int = Field(10, ge=1, description="optimizer steps between checkpoints")
    keep_checkpoints: int = Field(2, ge=1)
    seed: int = 0
    resume: bool = Field(False, description="continue from the run dir's last checkpoint")


# ---- batches and losses ---------------------------------------------------------------------------
Pair = tuple[list[int], list[int]]  # (prompt ids, completion ids)


def truncate_pair(pair: Pair, max_length: int) -> Pair:
    """Keep the whole prompt (up to max_length - 1) and cut the completion to fit."""
    prompt, completion = pair
    prompt = prompt[-(max_length - 1):]
    return prompt, completion[: max(1, max_length - len(prompt))]


def dpo_loss(
    policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPO (Rafailov et al. 2023): -log σ(β[(log π(y+) - log π_ref(y+)) - (log π(y-) - log π_ref(y-))]).

    Inputs are summed completion log-probs per pair. Returns (mean loss, chosen rewards, rejected rewards)
    with rewards β·(log π - log π_ref). Written out because TRL's version is a DPOTrainer method.
    """
    chosen_rewards = beta * (policy_chosen - ref_chosen)
    rejected_rewards = beta * (policy_rejected - ref_rejected)
    loss = -torch.nn.functional.logsigmoid(chosen_rewards - rejected_rewards).mean()
    return loss, chosen_rewards.detach(), rejected_rewards.detach()


def dpo_custom_loss(ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, beta: float) -> CustomLoss:
    """DPO as the engine's custom loss: data = the batch's chosen completions, then its rejected ones.

    Metrics: reward margin (β-scaled), pair accuracy (chosen reward above rejected), mean rewards.
    """

    def fn(data: Sequence[Datum], logprobs: TokenLogprobs) -> tuple[torch.Tensor, dict[str, float]]:
        sums = logprobs.sums()
        n = len(data) // 2
        loss, chosen_r, rejected_r = dpo_loss(sums[:n], sums[n:], ref_chosen.to(sums.device),
                                              ref_rejected.to(sums.device), beta)
        margin = chosen_r - rejected_r
        return loss, {"reward_margin": float(margin.mean()), "pair_accuracy": float((margin > 0).float().mean()),
                      "chosen_reward": float(chosen_r.mean()), "rejected_reward": float(rejected_r.mean())}

    return CustomLoss(fn, name="dpo")


def datums(pairs: Sequence[Pair]) -> list[Datum]:
    return [Datum(list(p), list(c)) for p, c in pairs]


def sequence_sums(engine: Any, pairs: Sequence[Pair]) -> torch.Tensor:
    """Summed completion log-probs of `pairs` under an engine or sampling client (on the CPU, no gradient)."""
    if not pairs:
        return torch.zeros(0)
    return engine.compute_logprobs(datums(pairs)).result().sums().cpu()


def batch_indices(n_items: int, batch_size: int, step: int, seed: int) -> list[int]:
    """Indices of the batch for optimizer step `step`: a seeded permutation per epoch, so order is resumable."""
    per_epoch = max(1, math.ceil(n_items / batch_size))
    epoch, k = divmod(step, per_epoch)
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(n_items, generator=gen).tolist()
    return perm[k * batch_size : (k + 1) * batch_size]


# ---- the step loop with exact checkpoints ---------------------------------------------------------
class TrainingSession:
    """Steps an engine with AdamW + linear warmup, and checkpoints that resume bit-for-bit.

    The learning rate of step s (`lr_at`) is computed here and sent with each optim_step (Tinker's shape:
    the client owns the schedule). A checkpoint folder `checkpoints/step-NNNNNN/`
    holds the engine's state and a JSON `extra` dict the method owns (losses, iteration, ...).
    """

    def __init__(self, engine: TrainingEngine, config: TrainConfig, root: Path | None,
                 total_steps: int | None = None):
        self.engine = engine
        self.config = config
        self.root = Path(root) / CHECKPOINT_DIR if root is not None else None
        self.total_steps = total_steps if total_steps is not None else config.max_steps
        self.step = 0

    @property
    def warmup(self) -> int:
        ratio = self.config.warmup_ratio
        return math.ceil(ratio * self.total_steps) if ratio is not None else self.config.warmup_steps

    def lr_at(self, step: int) -> float:
        """Learning rate of 0-based step `step`: linear warm-up, then constant or cosine decay."""
        warmup = self.warmup
        if self.config.lr_schedule == "cosine" and step >= warmup:
            progress = (step - warmup) / max(1, self.total_steps - warmup)
            return self.config.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        if self.config.lr_schedule == "linear" and step >= warmup:
            # get_linear_schedule_with_warmup: step s of T updates with lr·(T − s)/(T − warmup)
            return self.config.lr * max(0.0, (self.total_steps - step) / max(1, self.total_steps - warmup))
        return self.config.lr * (min(1.0, (step + 1) / warmup) if warmup else 1.0)

    def update(self, data: Sequence[Datum], loss: Loss) -> ForwardBackwardOutput:
        """forward_backward + optim_step (both submitted before waiting, so a remote engine pipelines)."""
        cfg = self.config
        fb = self.engine.forward_backward(data, loss)
        step = self.engine.optim_step(AdamParams(learning_rate=self.lr_at(self.step), weight_decay=cfg.weight_decay,
                                                 grad_clip_norm=cfg.grad_clip))
        out = fb.result()
        out.metrics.update(step.result())
        self.step += 1
        return out

    def update_accumulated(self, chunks: Sequence[tuple[Sequence[Datum], Loss]]) -> ForwardBackwardOutput:
        """One optimizer step on the gradient summed over several `forward_backward` calls (gradient
        accumulation, for batches whose activations do not fit in one pass). Each chunk's loss must already
        carry its share of the batch (e.g. a sum over the chunk divided by the batch size), so that the
        chunk losses add up to the batch loss; the returned loss and metrics are those sums."""
        cfg = self.config
        futures = [self.engine.forward_backward(data, loss) for data, loss in chunks]
        step = self.engine.optim_step(AdamParams(learning_rate=self.lr_at(self.step), weight_decay=cfg.weight_decay,
                                                 grad_clip_norm=cfg.grad_clip))
        outs = [f.result() for f in futures]
        metrics: dict[str, float] = {}
        for out in outs:
            for key, value in out.metrics.items():
                metrics[key] = metrics.get(key, 0.0) + value
        metrics.update(step.result())
        self.step += 1
        return ForwardBackwardOutput(loss=sum(o.loss for o in outs), metrics=metrics,
                                     logprob_sums=[v for o in outs for v in o.logprob_sums])

    def save(self, extra: dict[str, Any] | None = None) -> Path | None:
        """Write a checkpoint for the current step (atomic folder rename) and prune old ones."""
        if self.root is None:
            return None
        final = self.root / f"step-{self.step:06d}"
        with state_dir(self.engine, final) as tmp:
            self.engine.save_state(tmp)
            if self.engine.is_main:
                (tmp / "state.json").write_text(json.dumps({"step": self.step, "extra": extra or {}}),
                                                encoding="utf-8")
        if self.engine.is_main:
            for old in list_checkpoints(self.root.parent)[: -self.config.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        self.engine.sync()
        return final

    def restore(self) -> dict[str, Any] | None:
        """Load the newest checkpoint, if any; returns its `extra` dict (None when starting fresh)."""
        if self.root is None:
            return None
        found = list_checkpoints(self.root.parent)
        if not found:
            return None
        folder = found[-1]
        self.engine.load_state(folder)
        state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
        self.step = int(state["step"])
        return state["extra"]


@contextmanager
def state_dir(engine: TrainingEngine, target: Path) -> Iterator[Path]:
    """The folder to pass to `engine.save_state` for `target`, which then holds it whole or not at all.

    Every process of a multi-process engine calls save_state (it gathers each process's RNG state) but only
    the main one writes: it gets an atomic temp folder, the others `target` itself, untouched; all wait on exit
    until the main process has renamed it into place, so a load right after sees it.
    """
    if engine.is_main:
        with atomic_dir(target) as tmp:
            yield tmp
    else:
        yield Path(target)
    engine.sync()


def list_checkpoints(run_path: Path) -> list[Path]:
    """Finished checkpoint folders of a run dir, oldest first (temp folders of an interrupted save excluded)."""
    root = Path(run_path) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and
                  (p / "state.json").is_file())


# ---- the base of every trained method --------------------------------------------------------------
def create_engine(personalizer: Any, lora: LoraSettings, init_adapter: str | None = None) -> TrainingEngine:
    """The engine named by the method's config, holding a trainable copy of the personalizer's base model."""
    from personalign.engines import build_engine

    return build_engine(personalizer.config.engine, personalizer.backend, lora, init_adapter)


def save_trained(personalizer: Any, run_dir: Any, engine: TrainingEngine) -> str:
    """Save the trained weights into the run dir and write `method.json`; returns the saved folder's name.

    LoRA: `adapter/` beside the base model named in the manifest. Full fine-tuning: `model/` (weights and
    tokenizer), and the manifest's model points at it.
    """
    saved = engine.save_weights(run_dir.path)
    config = personalizer.backend.config
    if not engine.is_main:  # the main process writes the manifest
        return str(saved.get("adapter", "model"))
    if "adapter" in saved:
        # Remote engines record more than the adapter (tinker: its training checkpoint, a local copy).
        personalizer.save_manifest(run_dir, config, adapter=saved["adapter"],
                                   **{k: v for k, v in saved.items() if k != "adapter"})
        return str(saved["adapter"])
    personalizer.save_manifest(run_dir, config.model_copy(update={"model": saved["model"], "adapter": None}),
                               adapter=None)
    return "model"
