"""The `local` engine: the training protocol on an in-process torch model with a peft LoRA adapter, CPU or GPU.

Every call runs at once and returns a resolved future. Log-prob losses (`PolicyLoss`, `CustomLoss`) and
`compute_logprobs` share one forward, `token_logprobs`, and run without dropout (TRL's disable_dropout), so a
policy at π_ref's weights reproduces π_ref's log-probs; `CrossEntropy` (SFT) trains with dropout on.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from personalign.config import SamplingConfig
from personalign.engines.base import (
    AdamParams,
    CrossEntropy,
    CustomLoss,
    Datum,
    ForwardBackwardOutput,
    LoraSettings,
    Loss,
    PolicyLoss,
    SampledSequence,
    SamplingClient,
    ScoreLoss,
    TokenLogprobs,
    TrainingEngine,
    no_score_head,
    policy_loss,
    resolved,
)
from personalign.errors import PersonalignError
from personalign.io import atomic_dir

WEIGHTS_FILE = "weights.pt"
OPTIMIZER_FILE = "optimizer.pt"
ADAPTER_DIR = "adapter"


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

    # "all-linear" is peft's own shorthand (every linear layer but the output head).
    targets: list[str] | str = "all-linear" if settings.target_modules == ["all-linear"] else settings.target_modules
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in settings.target_modules if m not in present and targets != "all-linear"]
    if missing:
        raise PersonalignError(
            f"lora.target_modules: {missing} not found in the model; use module names it has, "
            f"e.g. {sorted(n for n in present if n.endswith('proj'))[:8]}"
        )
    # SEQ_CLS keeps a sequence classifier's fresh score head fully trainable (peft adds it to modules_to_save).
    config = LoraConfig(
        r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
        target_modules=targets if isinstance(targets, str) else list(targets),
        task_type="SEQ_CLS" if is_sequence_classifier(model) else "CAUSAL_LM",
    )
    return get_peft_model(model, config)


def is_sequence_classifier(model: Any) -> bool:
    """A transformers `...ForSequenceClassification` model (a score head instead of an LM head)."""
    return type(model).__name__.endswith("ForSequenceClassification")


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


# ---- forwards -------------------------------------------------------------------------------------
Pair = tuple[list[int], list[int]]  # (prompt ids, completion ids)


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


def sft_loss(model: Any, batch: dict[str, torch.Tensor], device: torch.device,
             weights: torch.Tensor | None = None) -> torch.Tensor:
    """Next-token cross-entropy over completion tokens only, their (weighted) mean; fp32 logits for bf16.

    Unit weights take torch's fused mean (the raw-loop speed bench/training.py holds this to).
    """
    input_ids = batch["input_ids"].to(device)
    logits = model(input_ids=input_ids, attention_mask=batch["attention_mask"].to(device)).logits[:, :-1].float()
    labels = batch["labels"][:, 1:].to(device)
    flat_logits, flat_labels = logits.reshape(-1, logits.size(-1)), labels.reshape(-1)
    if weights is None:
        return torch.nn.functional.cross_entropy(flat_logits, flat_labels, ignore_index=-100)
    nll = torch.nn.functional.cross_entropy(flat_logits, flat_labels, ignore_index=-100, reduction="none")
    w = weights[:, 1:].reshape(-1).to(nll)
    return (nll * w).sum() / w.sum().clamp(min=1e-12)


def _weights_tensor(data: Sequence[Datum], width: int) -> torch.Tensor | None:
    """Per-position weights aligned with `sft_batch` labels (None when every datum uses unit weights)."""
    if all(d.weights is None for d in data):
        return None
    out = torch.zeros((len(data), width))
    for row, d in enumerate(data):
        w = d.weights if d.weights is not None else [1.0] * len(d.completion)
        if len(w) != len(d.completion):
            raise PersonalignError(f"datum {row}: {len(w)} weights for {len(d.completion)} completion tokens")
        out[row, len(d.prompt) : len(d.prompt) + len(w)] = torch.tensor(w)
    return out


def token_logprobs(model: Any, pairs: Sequence[Pair], pad_id: int,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log p of each completion token and its mask, shape (batch, longest completion).

    Left-padded (as in generation, with matching position ids) so every completion ends at the right edge and
    the vocabulary projection runs only over the last completion-length positions (`logits_to_keep`): with a
    49k vocabulary that projection is most of the cost.
    """
    width = max(len(p) + len(c) for p, c in pairs)
    keep = max(len(c) for _, c in pairs)
    input_ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(pairs), width), dtype=torch.long)
    mask = torch.zeros((len(pairs), keep), dtype=torch.bool)
    for row, (prompt, completion) in enumerate(pairs):
        ids = prompt + completion
        input_ids[row, width - len(ids) :] = torch.tensor(ids)
        attention[row, width - len(ids) :] = 1
        mask[row, keep - len(completion) :] = True
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    input_ids, attention, positions, mask = (t.to(device) for t in (input_ids, attention, positions, mask))
    # logits at position t predict token t + 1: the last `keep` targets need logits at [-keep-1, -1).
    logits = model(input_ids=input_ids, attention_mask=attention, position_ids=positions,
                   logits_to_keep=keep + 1).logits[:, :-1].float()
    targets = input_ids[:, width - keep :]
    logp = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return logp, mask


def sequence_scores(model: Any, sequences: Sequence[list[int]], pad_id: int, device: torch.device) -> torch.Tensor:
    """A score head's scalar per sequence, right-padded (as TRL's preference collator pads): the classifier
    reads the last non-pad token through `config.pad_token_id`."""
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, ids in enumerate(sequences):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention[row, : len(ids)] = 1
    logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits
    if logits.dim() != 2 or logits.shape[-1] != 1:
        raise PersonalignError("ScoreLoss needs a model with a one-output score head (a sequence classifier), "
                               f"got logits of shape {tuple(logits.shape)}")
    return logits.squeeze(-1).float()


def _right_aligned(rows: Sequence[Sequence[float] | None], fallback: torch.Tensor) -> torch.Tensor:
    """Per-datum token lists placed like `token_logprobs` output (right edge); missing rows use `fallback`."""
    out = fallback.detach().clone()
    keep = out.shape[1]
    for i, row in enumerate(rows):
        if row is not None:
            if len(row) > keep:
                raise PersonalignError(f"datum {i}: {len(row)} per-token values for at most {keep} completion tokens")
            out[i, keep - len(row):] = torch.tensor(row, dtype=out.dtype)
    return out


# ---- the engine -----------------------------------------------------------------------------------
class LocalEngine(TrainingEngine):
    """The protocol on `backend.model` (an `HFBackend`), which it wraps with LoRA (or full FT) on creation."""

    name = "local"

    def __init__(self, backend: Any, lora: LoraSettings, init_adapter: str | None = None,
                 logprob_batch_size: int = 8):
        self.backend = backend
        if init_adapter:
            backend.model = load_trainable_adapter(backend.model, init_adapter)
        else:
            backend.model = apply_lora(backend.model, lora)
        self.params = [p for p in backend.model.parameters() if p.requires_grad]
        if not self.params:
            raise PersonalignError("no trainable weights; check lora.target_modules or set lora.enabled")
        self.logprob_batch_size = logprob_batch_size
        self.optimizer = self._fresh_optimizer()

    @property
    def model(self) -> Any:
        return self.backend.model

    @property
    def pad_id(self) -> int:
        return self.backend.tokenizer.pad_token_id

    def _fresh_optimizer(self) -> torch.optim.Optimizer:
        # Hyperparameters arrive with each optim_step; these placeholders are overwritten before any step.
        return torch.optim.AdamW(self.params, lr=0.0, weight_decay=0.0)

    # ---- training calls ---------------------------------------------------------------------------
    def _loss(self, data: Sequence[Datum], loss: Loss) -> tuple[torch.Tensor, ForwardBackwardOutput]:
        if not data:
            raise PersonalignError("forward_backward: empty batch")
        pairs = [(d.prompt, d.completion) for d in data]
        device = self.backend.device
        if isinstance(loss, ScoreLoss):
            self._require_score_head()
            value, metrics = loss.fn(data, sequence_scores(self.model, [p + c for p, c in pairs], self.pad_id, device))
            return value, ForwardBackwardOutput(float(value.detach()), [], dict(metrics))
        if isinstance(loss, CrossEntropy):
            batch = sft_batch(pairs, self.pad_id)
            value = sft_loss(self.model, batch, device, _weights_tensor(data, batch["input_ids"].shape[1]))
            return value, ForwardBackwardOutput(float(value.detach()))
        logp, mask = token_logprobs(self.model, pairs, self.pad_id, device)
        if isinstance(loss, PolicyLoss):
            if loss.kl_beta > 0 and any(d.ref_logprobs is None for d in data):
                raise PersonalignError("PolicyLoss with kl_beta > 0 needs every datum's ref_logprobs")
            advantages = torch.tensor([d.advantage for d in data], dtype=torch.float32, device=logp.device)
            sampling = None
            if any(d.sampling_logprobs is not None for d in data):
                sampling = _right_aligned([d.sampling_logprobs for d in data], logp)
            # π_ref's log-probs, when given, also yield the KL diagnostic at β = 0.
            has_ref = all(d.ref_logprobs is not None for d in data)
            ref = _right_aligned([d.ref_logprobs for d in data], logp) if has_ref else None
            value, kl = policy_loss(logp, mask, advantages, sampling, ref, loss.kl_beta, loss.clip_epsilon)
            metrics = {"kl": float(kl)}
        elif isinstance(loss, CustomLoss):
            value, metrics = loss.fn(data, TokenLogprobs(logp, mask))
        else:
            raise PersonalignError(f"unknown loss {loss!r}; use CrossEntropy, PolicyLoss, CustomLoss or ScoreLoss")
        sums = (logp.detach() * mask).sum(dim=-1).tolist()
        return value, ForwardBackwardOutput(float(value.detach()), sums, dict(metrics))

    def _require_score_head(self) -> None:
        model = self.model.get_base_model() if hasattr(self.model, "peft_config") else self.model
        if not is_sequence_classifier(model):
            raise no_score_head(f"{self.name} (a causal LM)")

    def forward_backward(self, data: Sequence[Datum], loss: Loss) -> Future[ForwardBackwardOutput]:
        # Dropout on for SFT; off for log-prob and score losses (log-probs comparable to π_ref's; TRL's
        # RewardTrainer disables dropout too).
        self.model.train(isinstance(loss, CrossEntropy))
        value, out = self._loss(data, loss)
        value.backward()
        self.model.eval()  # generation between steps must not see dropout
        return resolved(out)

    def forward(self, data: Sequence[Datum], loss: Loss) -> Future[ForwardBackwardOutput]:
        self.model.eval()
        with torch.no_grad():
            _, out = self._loss(data, loss)
        return resolved(out)

    def optim_step(self, params: AdamParams) -> Future[dict[str, float]]:
        for group in self.optimizer.param_groups:
            group.update(lr=params.learning_rate, betas=(params.beta1, params.beta2), eps=params.eps,
                         weight_decay=params.weight_decay)
        metrics: dict[str, float] = {}
        if params.grad_clip_norm > 0:
            metrics["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.params, params.grad_clip_norm))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return resolved(metrics)

    # ---- sampling and scoring ---------------------------------------------------------------------
    def sample(self, prompts: Sequence[list[int]], sampling: SamplingConfig,
               progress: bool = False) -> Future[list[list[SampledSequence]]]:
        self.model.eval()
        return resolved(self.backend.sample_ids(list(prompts), sampling, progress))

    @torch.no_grad()
    def compute_logprobs(self, data: Sequence[Datum]) -> Future[TokenLogprobs]:
        self.model.eval()
        pairs = [(d.prompt, d.completion) for d in data]
        keep = max((len(c) for _, c in pairs), default=0)
        values = torch.zeros((len(pairs), keep))
        mask = torch.zeros((len(pairs), keep), dtype=torch.bool)
        for start in range(0, len(pairs), self.logprob_batch_size):
            logp, m = token_logprobs(self.model, pairs[start : start + self.logprob_batch_size], self.pad_id,
                                     self.backend.device)
            rows = slice(start, start + logp.shape[0])
            values[rows, keep - logp.shape[1]:] = logp.cpu()
            mask[rows, keep - logp.shape[1]:] = m.cpu()
        return resolved(TokenLogprobs(values, mask))

    def snapshot(self) -> SamplingClient:
        return LocalSnapshot(self, trainable_state(self.model))

    @contextmanager
    def weights(self, state: dict[str, torch.Tensor]) -> Any:
        """Run with `state` swapped in for the trainable weights, then put the current ones back."""
        current = trainable_state(self.model)
        load_trainable_state(self.model, state)
        try:
            yield
        finally:
            load_trainable_state(self.model, current)

    # ---- persistence ------------------------------------------------------------------------------
    def save_state(self, folder: Path, optimizer: bool = True) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(trainable_state(self.model), folder / WEIGHTS_FILE)
        if optimizer:  # the torch RNG drives LoRA dropout: restoring it makes resume bit-exact
            torch.save({"optimizer": self.optimizer.state_dict(), "rng": torch.get_rng_state()},
                       folder / OPTIMIZER_FILE)
        return folder

    def load_state(self, folder: Path, optimizer: bool = True) -> None:
        folder = Path(folder)
        load_trainable_state(self.model, torch.load(folder / WEIGHTS_FILE, map_location="cpu"))
        if optimizer and (folder / OPTIMIZER_FILE).is_file():
            saved = torch.load(folder / OPTIMIZER_FILE, map_location="cpu", weights_only=False)
            self.optimizer.load_state_dict(saved["optimizer"])
            torch.set_rng_state(saved["rng"])
        else:
            self.optimizer = self._fresh_optimizer()

    def save_weights(self, folder: Path) -> dict[str, Any]:
        """LoRA: `folder/adapter/` (manifest: adapter); full FT: `folder/model/` with the tokenizer (manifest:
        model = that folder)."""
        model = self.model
        target = Path(folder) / (ADAPTER_DIR if hasattr(model, "peft_config") else "model")
        with atomic_dir(target) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            if not hasattr(model, "peft_config"):
                self.backend.tokenizer.save_pretrained(tmp)
        model.eval()
        if hasattr(model, "peft_config"):
            return {"adapter": ADAPTER_DIR}
        return {"model": str(target.resolve())}


class LocalSnapshot(SamplingClient):
    """Frozen weights of a `LocalEngine` (π_ref): swapped in for each call, so no second model is held."""

    def __init__(self, engine: LocalEngine, state: dict[str, torch.Tensor]):
        self.engine = engine
        self.state = state

    def sample(self, prompts: Sequence[list[int]], sampling: SamplingConfig,
               progress: bool = False) -> Future[list[list[SampledSequence]]]:
        with self.engine.weights(self.state):
            return self.engine.sample(prompts, sampling, progress)

    def compute_logprobs(self, data: Sequence[Datum]) -> Future[TokenLogprobs]:
        with self.engine.weights(self.state):
            return self.engine.compute_logprobs(data)
