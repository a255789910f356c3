"""Shared training machinery for sft/dpo/ditto (and rlaif): LoRA setup, the optimizer loop, DPO loss, checkpoints.

Why a plain torch loop rather than TRL's SFTTrainer/DPOTrainer:
- tokens must come from `TrainableBackend.prompt_completion_ids`, the one place chat rendering happens,
  so training sees exactly the ids generation sees (TRL re-applies the chat template itself);
- DITTO resamples from the policy between optimizer steps and mixes three comparison kinds per batch,
  which TRL's trainers do not support (the reference code subclasses `Trainer` to do it);
- exact resume is simple to guarantee here: a checkpoint holds the trainable weights, the optimizer and
  scheduler state and the torch RNG state, and the data order is a pure function of (seed, step).
LoRA itself comes from peft.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import Field

from personalign.config import Config
from personalign.errors import PersonalignError
from personalign.io import atomic_dir

CHECKPOINT_DIR = "checkpoints"
ADAPTER_DIR = "adapter"


class LoraSettings(Config):
    """LoRA adapter shape; `enabled: false` means full fine-tuning of every weight."""

    enabled: bool = Field(True, description="false = full fine-tuning (saves a whole model instead of an adapter)")
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


class TrainConfig(Config):
    """Fields every training method shares (each method's config extends this)."""

    lora: LoraSettings = Field(default_factory=LoraSettings)
    lr: float = Field(2e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    batch_size: int = Field(4, ge=1)
    max_steps: int = Field(40, ge=0)
    max_length: int = Field(512, ge=16, description="prompt + completion tokens; longer completions are cut")
    checkpoint_every: int = Field(10, ge=1, description="optimizer steps between checkpoints")
    keep_checkpoints: int = Field(2, ge=1)
    seed: int = 0
    resume: bool = Field(False, description="continue from the run dir's last checkpoint")


# ---- model setup ----------------------------------------------------------------------------------
def apply_lora(model: Any, settings: LoraSettings) -> Any:
    """Wrap `model` in a fresh trainable LoRA adapter (peft), or make every weight trainable (full FT).

    peft keeps adapter weights in fp32 on a bf16 base (autocast_adapter_dtype), so Adam updates stay precise.
    """
    if not settings.enabled:
        for param in model.parameters():
            param.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in settings.target_modules if m not in present]
    if missing:
        raise PersonalignError(
            f"lora.target_modules: {missing} not found in the model; use module names it has, "
            f"e.g. {sorted(n for n in present if n.endswith('proj'))[:8]}"
        )
    config = LoraConfig(
        r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules), task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def load_trainable_adapter(model: Any, adapter: str | Path) -> Any:
    """Load a saved LoRA adapter onto `model` with its weights trainable (continue training from it)."""
    from peft import PeftModel

    if not (Path(adapter) / "adapter_config.json").is_file():
        raise PersonalignError(f"{adapter}: no adapter_config.json; init_adapter must be a saved LoRA adapter folder")
    return PeftModel.from_pretrained(model, str(adapter), is_trainable=True)


def trainable_state(model: Any) -> dict[str, torch.Tensor]:
    """Copies of the trainable tensors (LoRA weights, or every weight under full fine-tuning)."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


@torch.no_grad()
def load_trainable_state(model: Any, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    unknown = [k for k in state if k not in params]
    if unknown:
        raise PersonalignError(f"checkpoint does not match the model (unknown weights {unknown[:3]}); start a new run")
    for name, value in state.items():
        params[name].copy_(value.to(params[name].device, params[name].dtype))


def save_weights(model: Any, folder: Path) -> Path:
    """Save the adapter (LoRA) or the whole model (full FT) into `folder`, atomically via a temp folder."""
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
    return Path(folder)


# ---- batches and losses ---------------------------------------------------------------------------
Pair = tuple[list[int], list[int]]  # (prompt ids, completion ids)


def truncate_pair(pair: Pair, max_length: int) -> Pair:
    """Keep the whole prompt (up to max_length - 1) and cut the completion to fit."""
    prompt, completion = pair
    prompt = prompt[-(max_length - 1):]
    return prompt, completion[: max(1, max_length - len(prompt))]


def sft_batch(pairs: Sequence[Pair], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input ids, attention mask, and labels that are -100 on prompt and padding tokens."""
    width = max(len(p) + len(c) for p, c in pairs)
    input_ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(pairs), width), dtype=torch.long)
    labels = torch.full((len(pairs), width), -100, dtype=torch.long)
    for row, (prompt, completion) in enumerate(pairs):
        ids = prompt + completion
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention[row, : len(ids)] = 1
        labels[row, len(prompt) : len(ids)] = torch.tensor(completion)
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def sft_loss(model: Any, batch: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
    """Mean next-token cross-entropy over completion tokens only (fp32 logits for a stable bf16 loss)."""
    input_ids = batch["input_ids"].to(device)
    logits = model(input_ids=input_ids, attention_mask=batch["attention_mask"].to(device)).logits[:, :-1].float()
    labels = batch["labels"][:, 1:].to(device)
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100)


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


def dpo_batch_loss(
    model: Any, chosen: Sequence[Pair], rejected: Sequence[Pair], ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor, beta: float, pad_id: int, device: torch.device,
) -> tuple[torch.Tensor, dict[str, float]]:
    """DPO loss of a batch of (chosen, rejected) pairs in one forward pass (both halves concatenated, as TRL does).

    Returns the loss and its metrics: reward margin (β-scaled), pair accuracy (chosen reward above rejected).
    """
    from personalign.backends.hf import sequence_logprobs

    logps = sequence_logprobs(model, [*chosen, *rejected], pad_id, device)
    n = len(chosen)
    loss, chosen_r, rejected_r = dpo_loss(logps[:n], logps[n:], ref_chosen.to(logps.device),
                                          ref_rejected.to(logps.device), beta)
    margin = chosen_r - rejected_r
    return loss, {"reward_margin": float(margin.mean()), "pair_accuracy": float((margin > 0).float().mean()),
                  "chosen_reward": float(chosen_r.mean()), "rejected_reward": float(rejected_r.mean())}


@torch.no_grad()
def reference_logprobs(model: Any, pairs: Sequence[Pair], pad_id: int, device: torch.device,
                       batch_size: int = 8) -> torch.Tensor:
    """Summed completion log-probs under the model as it is now (eval mode: no dropout), on the CPU."""
    from personalign.backends.hf import sequence_logprobs

    was_training = model.training
    model.eval()
    out = [sequence_logprobs(model, pairs[i : i + batch_size], pad_id, device).cpu()
           for i in range(0, len(pairs), batch_size)]
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)


def batch_indices(n_items: int, batch_size: int, step: int, seed: int) -> list[int]:
    """Indices of the batch for optimizer step `step`: a seeded permutation per epoch, so order is resumable."""
    per_epoch = max(1, math.ceil(n_items / batch_size))
    epoch, k = divmod(step, per_epoch)
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(n_items, generator=gen).tolist()
    return perm[k * batch_size : (k + 1) * batch_size]


# ---- optimizer loop with exact checkpoints --------------------------------------------------------
class TrainingSession:
    """AdamW + linear warmup over the trainable weights, with checkpoints that resume bit-for-bit.

    A checkpoint folder `checkpoints/step-NNNNNN/` holds trainable weights, optimizer and scheduler state,
    the torch RNG state (LoRA dropout) and a JSON `extra` dict the method owns (losses, iteration, ...).
    """

    def __init__(self, model: Any, config: TrainConfig, root: Path | None):
        self.model = model
        self.config = config
        self.root = Path(root) / CHECKPOINT_DIR if root is not None else None
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise PersonalignError("no trainable weights; check lora.target_modules or set lora.enabled")
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        warmup = config.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0
        )
        self.step = 0

    def update(self, loss: torch.Tensor) -> float:
        """Backward, clip, one optimizer step; returns the loss value."""
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]],
                                       self.config.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return float(loss.detach())

    def save(self, extra: dict[str, Any] | None = None) -> Path | None:
        """Write a checkpoint for the current step (atomic folder rename) and prune old ones."""
        if self.root is None:
            return None
        final = self.root / f"step-{self.step:06d}"
        with atomic_dir(final) as tmp:
            torch.save(trainable_state(self.model), tmp / "weights.pt")
            torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                        "rng": torch.get_rng_state()}, tmp / "optimizer.pt")
            (tmp / "state.json").write_text(json.dumps({"step": self.step, "extra": extra or {}}), encoding="utf-8")
        for old in list_checkpoints(self.root.parent)[: -self.config.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def restore(self) -> dict[str, Any] | None:
        """Load the newest checkpoint, if any; returns its `extra` dict (None when starting fresh)."""
        if self.root is None:
            return None
        found = list_checkpoints(self.root.parent)
        if not found:
            return None
        folder = found[-1]
        load_trainable_state(self.model, torch.load(folder / "weights.pt", map_location="cpu"))
        opt = torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=False)
        self.optimizer.load_state_dict(opt["optimizer"])
        self.scheduler.load_state_dict(opt["scheduler"])
        torch.set_rng_state(opt["rng"])
        state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
        self.step = int(state["step"])
        return state["extra"]


def list_checkpoints(run_path: Path) -> list[Path]:
    """Finished checkpoint folders of a run dir, oldest first (temp folders of an interrupted save excluded)."""
    root = Path(run_path) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and
                  (p / "state.json").is_file())


# ---- the base of every trained method --------------------------------------------------------------
def require_trainable(backend: Any, method: str) -> Any:
    from personalign.backends.base import TrainableBackend

    if not isinstance(backend, TrainableBackend):
        raise PersonalignError(
            f"method {method!r} trains weights and needs a local model backend (backend: hf), "
            f"got {type(backend).__name__}"
        )
    return backend


def save_trained(personalizer: Any, run_dir: Any, model: Any) -> str:
    """Save the trained weights into the run dir and write `method.json`; returns the saved folder's name.

    LoRA: `adapter/` beside the base model named in the manifest. Full fine-tuning: `model/` (weights and
    tokenizer), and the manifest's model points at it.
    """
    backend = personalizer.backend
    if hasattr(model, "peft_config"):
        save_weights(model, run_dir.path / ADAPTER_DIR)
        personalizer.save_manifest(run_dir, backend.config, adapter=ADAPTER_DIR)
        return ADAPTER_DIR
    folder = save_weights(model, run_dir.path / "model")
    backend.tokenizer.save_pretrained(folder)
    model_config = backend.config.model_copy(update={"model": str(folder.resolve()), "adapter": None})
    personalizer.save_manifest(run_dir, model_config, adapter=None)
    return "model"
