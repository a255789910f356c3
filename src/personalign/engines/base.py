"""The training-engine protocol every trained method is written against, shaped like Tinker's primitives.

A method (SFT, DPO, DITTO, GRPO) renders chats into token ids on the client side (`engines.render`), then
drives an engine through a handful of calls:

- `forward_backward(data, loss)`: accumulate the gradient of `loss` over `data`. `loss` is a built-in
  (`CrossEntropy` with per-token weights; `PolicyLoss`, the importance-sampling / PPO-clip loss with
  advantages for GRPO) or a `CustomLoss`, any function of the per-token log-probabilities (DPO, DITTO);
  `ScoreLoss`, a function of a score head's scalar per sequence (the Bradley-Terry reward model), exists
  only on engines that hold a sequence-classification model (`local`; the Tinker service trains LM heads
  only, so its engine refuses it);
- `forward(data, loss)`: the same without a gradient (held-out loss);
- `optim_step(AdamParams)`: one Adam step on the accumulated gradient, then zero it;
- `sample(prompts, sampling)` from the current weights, `compute_logprobs(data)` of given completions;
- `snapshot()`: a frozen `SamplingClient` at the current weights (π_ref);
- `save_state` / `load_state` (resume), `save_weights` (export for generation).

Every call returns a `concurrent.futures.Future`, so a remote engine can pipeline (submit step n+1 before
waiting on step n, as tinker-cookbook's SFT loop does); the local engine resolves each one at once.
Tinker's cross-entropy is a weighted *sum*; here it is the weighted token *mean* (weights default to 1), the
loss personalign's SFT always minimized, so a remote engine scales the weights by 1 / Σw itself.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch
from pydantic import Field

from personalign.config import Config, SamplingConfig
from personalign.errors import PersonalignError

T = TypeVar("T")


def resolved(value: T) -> Future[T]:
    """A future that is already done: what a synchronous (local) engine returns."""
    future: Future[T] = Future()
    future.set_result(value)
    return future


ATTENTION_AND_MLP = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class LoraSettings(Config):
    """LoRA adapter shape; `enabled: false` means full fine-tuning of every weight."""

    enabled: bool = Field(True, description="false = full fine-tuning (saves a whole model instead of an adapter)")
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


# ---- data -------------------------------------------------------------------------------------------
@dataclass
class Datum:
    """One sequence: prompt ids (never scored) and completion ids (scored), plus per-loss inputs.

    `weights`: per completion token, for `CrossEntropy` (None = all 1). `advantage`: per sequence, for
    `PolicyLoss`. `sampling_logprobs`: per completion token under the policy that sampled it (None = on
    policy: the ratio is exactly 1 and carries the gradient). `ref_logprobs`: per token under π_ref, for the
    policy loss's KL term.
    """

    prompt: list[int]
    completion: list[int]
    weights: list[float] | None = None
    advantage: float = 0.0
    sampling_logprobs: list[float] | None = None
    ref_logprobs: list[float] | None = None


@dataclass
class SampledSequence:
    """A sampled completion: its tokens (end-of-turn excluded) and why sampling stopped."""

    tokens: list[int]
    stop_reason: Literal["stop", "length"]


@dataclass
class AdamParams:
    """One optimizer step's settings (Tinker's AdamParams plus the decoupled weight decay and clipping)."""

    learning_rate: float
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip_norm: float = 0.0  # 0 = no clipping


@dataclass
class ForwardBackwardOutput:
    """The loss value, per-datum completion log-prob sums (when the loss computed them), and loss metrics."""

    loss: float
    logprob_sums: list[float] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)


# ---- losses -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CrossEntropy:
    """Σ w·(−log p(token)) / Σ w over every completion token of the batch (weights default to 1)."""

    name: str = "cross_entropy"


@dataclass(frozen=True)
class PolicyLoss:
    """GRPO / PPO policy loss with per-sequence advantages; see `policy_loss` for the formula.

    `clip_epsilon` None = the importance-sampling loss (Tinker's `importance_sampling`), else PPO-clip.
    `kl_beta` > 0 adds β·KL(π ‖ π_ref) per token (k3), which needs each datum's `ref_logprobs`.
    """

    clip_epsilon: float | None = None
    kl_beta: float = 0.0
    name: str = "policy"


@dataclass
class TokenLogprobs:
    """Per-token completion log-probs of a batch: one (batch, T) tensor, each completion at the right edge
    (left-padded, as generation lays sequences out), and its boolean mask."""

    values: torch.Tensor
    mask: torch.Tensor

    def sums(self) -> torch.Tensor:
        """Summed log p(completion | prompt) per datum (differentiable)."""
        return (self.values * self.mask).sum(dim=-1)

    def per_datum(self) -> list[list[float]]:
        """Each datum's completion log-probs, unpadded (completions sit at the right edge)."""
        keep = self.values.shape[1]
        return [self.values[i, keep - int(self.mask[i].sum()):].tolist() for i in range(self.values.shape[0])]


# fn(data, token log-probs) → (scalar loss, metrics); the gradient flows through the log-probs.
CustomLossFn = Callable[[Sequence[Datum], TokenLogprobs], tuple[torch.Tensor, dict[str, float]]]


@dataclass(frozen=True)
class CustomLoss:
    """Any differentiable function of the per-token log-probabilities (Tinker's forward_backward_custom)."""

    fn: CustomLossFn
    name: str = "custom"


# fn(data, scores) → (scalar loss, metrics); `scores` holds the score head's output per datum (prompt +
# completion read as one sequence, the score taken at its last token).
ScoreLossFn = Callable[[Sequence[Datum], torch.Tensor], tuple[torch.Tensor, dict[str, float]]]


@dataclass(frozen=True)
class ScoreLoss:
    """Any differentiable function of a score head's per-sequence scalars (the Bradley-Terry reward model).

    Needs a sequence-classification model: the `local` engine with one supports it; engines without a
    score head (Tinker) raise a `PersonalignError` saying so.
    """

    fn: ScoreLossFn
    name: str = "score"


Loss = CrossEntropy | PolicyLoss | CustomLoss | ScoreLoss


def policy_loss(logp: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor,
                sampling_logp: torch.Tensor | None = None, ref_logp: torch.Tensor | None = None,
                beta: float = 0.0, clip_epsilon: float | None = None,
                reduce: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, mean KL), or per-sequence (loss, KL) with `reduce=False`.

    Per token, with ratio ρ = exp(logp − logp_sampling) (logp_sampling = logp.detach() on policy, so ρ = 1 in
    value and carries ∇logp):  −ρ·A  (PPO: −min(ρA, clip(ρ, 1±ε)·A))  + β·k3, where
    k3 = exp(ref − logp) − (ref − logp) − 1 is the unbiased non-negative KL estimator; averaged over each
    completion's tokens, then over completions (GRPO's sequence-mean form).
    """
    mask_f = mask.float()
    ratio = torch.exp(logp - (logp.detach() if sampling_logp is None else sampling_logp))
    adv = advantages.unsqueeze(1)
    surrogate = ratio * adv
    if clip_epsilon is not None:
        surrogate = torch.minimum(surrogate, torch.clamp(ratio, 1 - clip_epsilon, 1 + clip_epsilon) * adv)
    delta = (ref_logp if ref_logp is not None else logp.detach()) - logp
    kl = torch.exp(delta) - delta - 1
    per_token = -surrogate + beta * kl
    lengths = mask_f.sum(dim=1).clamp(min=1)
    per_sequence = (per_token * mask_f).sum(dim=1) / lengths
    kl_per_sequence = (kl * mask_f).sum(dim=1) / lengths
    if not reduce:
        return per_sequence, kl_per_sequence.detach()
    return per_sequence.mean(), kl_per_sequence.mean().detach()


# ---- the engine -------------------------------------------------------------------------------------
def no_score_head(engine: str) -> PersonalignError:
    return PersonalignError(f"engine {engine!r} has no scalar score head (ScoreLoss, the Bradley-Terry reward "
                            "model); train it on engine local, or train a generative judge (--kind gen-rm)")


class SamplingClient(ABC):
    """Sampling and scoring at fixed weights (a snapshot, or the training engine's current weights)."""

    @abstractmethod
    def sample(self, prompts: Sequence[list[int]], sampling: SamplingConfig,
               progress: bool = False) -> Future[list[list[SampledSequence]]]:
        """`sampling.n` sequences per prompt (token ids), in input order."""

    @abstractmethod
    def compute_logprobs(self, data: Sequence[Datum]) -> Future[TokenLogprobs]:
        """Per-token log-probs of each datum's completion (no gradient)."""


class TrainingEngine(SamplingClient):
    """A trainable model (LoRA or full) that methods drive only through these calls."""

    name: str = "engine"
    is_main: bool = True  # the one process that writes files (rank 0 of a multi-process engine)

    def sync(self) -> None:
        """Wait until every process of the engine reaches this point (no-op for one process)."""

    def broadcast(self, value: T) -> T:
        """The main process's `value`, on every process (identity for one process): client-side data that each
        process computed itself (e.g. sampled synthetic rows) made identical before training on it."""
        return value

    @abstractmethod
    def forward_backward(self, data: Sequence[Datum], loss: Loss) -> Future[ForwardBackwardOutput]:
        """Add the gradient of `loss` over `data` to the accumulated gradient."""

    @abstractmethod
    def forward(self, data: Sequence[Datum], loss: Loss) -> Future[ForwardBackwardOutput]:
        """`loss` over `data` without a gradient and without dropout."""

    @abstractmethod
    def optim_step(self, params: AdamParams) -> Future[dict[str, float]]:
        """One Adam step on the accumulated gradient, which is then zeroed; returns e.g. the gradient norm."""

    @abstractmethod
    def snapshot(self) -> SamplingClient:
        """A sampling client frozen at the current weights (later steps do not move it)."""

    @abstractmethod
    def save_state(self, folder: Path, optimizer: bool = True) -> Path:
        """Weights (and optimizer state, and the engine's RNG) into `folder`, for an exact resume."""

    @abstractmethod
    def load_state(self, folder: Path, optimizer: bool = True) -> None:
        """Load what `save_state` wrote; `optimizer=False` loads weights only and starts a fresh optimizer."""

    @abstractmethod
    def save_weights(self, folder: Path) -> dict[str, Any]:
        """Weights for generation/export into `folder`; returns what the run manifest must record."""
