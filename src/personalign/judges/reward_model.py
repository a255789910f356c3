"""Bradley-Terry reward models: train on (prompt, chosen, rejected[, margin]) pairs, score outputs, act as a judge.

Backbones: `minilm` (the shipped all-MiniLM-L6-v2 as a one-output sequence regressor over the
(prompt, response) pair; fast on CPU) or any causal LM with a scalar head on its last token (`default` =
SmolLM2-135M-Instruct), full fine-tuning or LoRA. Training runs through the engine protocol (the BT loss as
a `ScoreLoss` on the local engine, the one with a score head) with TRL RewardTrainer's recipe, on inputs we
tokenize ourselves (so the causal LM sees the exact chat rendering generation uses); held-out accuracy
every `eval_every` steps lands in the run dir's metrics.jsonl, checkpoints every `save_every` steps, and
`resume=True` continues from the last one.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from personalign.config import Config
from personalign.engines.base import Datum, LoraSettings, ScoreLoss, no_score_head
from personalign.errors import PersonalignError
from personalign.io import atomic_dir
from personalign.judges.base import Judge, JudgeScore
from personalign.judges.labeled_sets import LabeledPair
from personalign.profiles.schema import Profile
from personalign.progress import Progress
from personalign.runs import RunDir
from personalign.splits import TrainingData, group_split, write_training_data

RM_FILE = "reward_model.json"
MODEL_DIR = "reward_model"


# Defaults that differ by kind: a Bradley-Terry head trains a small encoder in full; a generative judge is a
# chat LM trained with LoRA (the only kind of training the Tinker service offers) on long comparison prompts.
KIND_DEFAULTS: dict[str, dict[str, Any]] = {
    "bt": {"backbone": "minilm", "lora": False, "learning_rate": 5e-5, "max_length": 384},
    "gen-rm": {"backbone": "default", "lora": True, "learning_rate": 5e-4, "max_length": 2048, "epochs": 4.0},
}


class RewardModelConfig(Config):
    """How to build and train a reward model (written to the run dir as config.yaml).

    Fields left unset take the defaults of their `kind` (`KIND_DEFAULTS`); the resolved values are saved.
    """

    kind: Literal["bt", "gen-rm"] = Field(
        "bt", description="bt: Bradley-Terry scalar head | gen-rm: a generative judge (an LM answering A or B)")
    engine: str = Field("local", description="training engine (engines.ENGINES); bt needs a score head: local only")
    backbone: str = Field("minilm", description="minilm | default (SmolLM2) | a causal-LM folder or hub id "
                                                "(gen-rm: default)")
    lora: bool = Field(False, description="train LoRA adapters (+ the score head) instead of all weights "
                                          "(gen-rm: LoRA by default)")
    lora_r: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)
    learning_rate: float = Field(5e-5, gt=0, description="(gen-rm default: 5e-4, LoRA)")
    epochs: float = Field(1.0, gt=0, description="(gen-rm default: 4)")
    max_steps: int = Field(-1, description="stop after this many optimizer steps; -1 = run all epochs")
    batch_size: int = Field(8, ge=1, description="pairs per step (gen-rm: each pair in both orders)")
    micro_batch_size: int = Field(2, ge=1, description="gen-rm: sequences per forward/backward pass; their "
                                  "gradients add up to one optimizer step per batch (memory on CPU with the "
                                  "default model: 16 comparisons per pass held 12 GB of activations, 4 held 6 GB)")
    max_length: int = Field(384, ge=16, description="tokens per (prompt, response); longer inputs are cut "
                                                    "(gen-rm: per comparison, default 2048)")
    max_chars: int = Field(1500, ge=50, description="gen-rm: characters kept of the prompt and of each response")
    eval_every: int = Field(50, ge=1, description="held-out accuracy every N steps")
    save_every: int = Field(50, ge=1, description="checkpoint every N steps")
    heldout_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    seed: int = 0
    device: str = "auto"

    @model_validator(mode="before")
    @classmethod
    def _kind_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("kind") in KIND_DEFAULTS:
            data = {**KIND_DEFAULTS[data["kind"]], **{k: v for k, v in data.items() if v is not None}}
        return data


def bradley_terry_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None = None
) -> torch.Tensor:
    """-log σ(r_chosen − r_rejected − margin), averaged: the loss TRL's RewardTrainer minimizes.

    Training minimizes it (`bt_score_loss`) and reports it on the held-out pairs before and after
    (`heldout_loss_before`, `heldout_loss`).
    """
    diff = chosen - rejected - (margin if margin is not None else 0.0)
    return -torch.nn.functional.logsigmoid(diff).mean()


# Engines with a scalar score head. The Tinker service trains LM heads only (no sequence classifier), so a
# Bradley-Terry RM cannot train there; a generative judge (`--kind gen-rm`) is the reward model that can.
SCORE_HEAD_ENGINES = ("local",)


def check_engine(config: RewardModelConfig) -> None:
    """Refuse, before any model loads, a BT reward model on an engine without a score head."""
    if config.kind == "bt" and config.engine not in SCORE_HEAD_ENGINES:
        raise no_score_head(config.engine)


def resolve_backbone(backbone: str) -> tuple[str, Literal["encoder", "causal"]]:
    if backbone in ("minilm", "all-MiniLM-L6-v2"):
        from personalign.backends.embedder import resolve_embedder_path

        return resolve_embedder_path("minilm"), "encoder"
    from personalign.backends.hf import resolve_model_path

    return resolve_model_path(backbone), "causal"


class RewardModel:
    """A scalar-output sequence classifier plus the one tokenization it was trained with."""

    def __init__(self, model: Any, tokenizer: Any, kind: Literal["encoder", "causal"], max_length: int = 384,
                 device: str | torch.device = "cpu"):
        self.model = model
        self.tokenizer = tokenizer
        self.kind = kind
        self.max_length = max_length
        self.device = torch.device(device)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        # Sequence classifiers find the last real token through config.pad_token_id.
        model.config.pad_token_id = tokenizer.pad_token_id

    # ---- building --------------------------------------------------------------------------------
    @classmethod
    def fresh(cls, config: RewardModelConfig) -> RewardModel:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        from transformers.utils import logging as hf_logging

        from personalign.backends.hf import resolve_device

        hf_logging.set_verbosity_error()
        path, kind = resolve_backbone(config.backbone)
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
        except OSError as exc:
            raise PersonalignError(
                f"reward-model backbone {config.backbone!r} cannot be loaded ({str(exc).splitlines()[0][:120]}); "
                "use minilm, default, or a local model folder"
            ) from None
        device = resolve_device(config.device)
        return cls(model.to(device), tokenizer, kind, config.max_length, device)

    @classmethod
    def load(cls, run_dir: str | Path, device: str = "auto") -> RewardModel:
        """Load a trained RM from its run dir (full weights, or base + LoRA adapter)."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        from transformers.utils import logging as hf_logging

        from personalign.backends.hf import resolve_device

        hf_logging.set_verbosity_error()
        manifest_path = Path(run_dir) / RM_FILE
        if not manifest_path.is_file():
            raise PersonalignError(f"{run_dir}: no {RM_FILE}; pass the run dir of a finished `reward train`")
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        weights = Path(run_dir) / MODEL_DIR
        if manifest["lora"]:
            from peft import PeftModel

            base_path, _ = resolve_backbone(manifest["backbone"])
            base = AutoModelForSequenceClassification.from_pretrained(base_path, num_labels=1, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(weights)
            base.config.pad_token_id = tokenizer.pad_token_id
            model = PeftModel.from_pretrained(base, weights)
        else:
            model = AutoModelForSequenceClassification.from_pretrained(weights, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(weights)
        target = resolve_device(device)
        return cls(model.to(target).eval(), tokenizer, manifest["kind"], manifest["max_length"], target)

    # ---- encoding: the one place (prompt, response) become RM input ids --------------------------
    def encode(self, prompt: str, response: str) -> list[int]:
        if self.kind == "encoder":
            # Cross-encoder pair input; the prompt is cut first (its tail) so the response, what is judged,
            # survives whole; only a response longer than the budget on its own is cut too. Written out because
            # the tokenizer's `only_first` fails rather than cut the response when that is needed.
            tok = self.tokenizer
            head, middle, tail = self._pair_template()
            budget = self.max_length - len(head) - len(middle) - len(tail)
            response_ids = tok(response, add_special_tokens=False)["input_ids"][: max(1, budget - 1)]
            prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"][: max(0, budget - len(response_ids))]
            return [*head, *prompt_ids, *middle, *response_ids, *tail]
        chat = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        if getattr(self.tokenizer, "chat_template", None):
            ids = list(self.tokenizer.apply_chat_template(chat, tokenize=True, return_dict=True)["input_ids"])
        else:
            ids = self.tokenizer(f"{prompt}\n\n{response}")["input_ids"] + [self.tokenizer.eos_token_id]
        # The scalar head reads the last token: keep the end of long inputs.
        return ids[-self.max_length :]

    def _pair_template(self) -> tuple[list[int], list[int], list[int]]:
        """The special tokens the tokenizer puts before, between and after a pair (e.g. [CLS] · [SEP] · [SEP])."""
        tok = self.tokenizer
        a, b = (tok(t, add_special_tokens=False)["input_ids"] for t in ("a", "b"))
        ids = list(tok("a", "b")["input_ids"])
        i = ids.index(a[0])
        j = ids.index(b[0], i + len(a))
        return ids[:i], ids[i + len(a) : j], ids[j + len(b) :]

    # ---- scoring ---------------------------------------------------------------------------------
    @torch.no_grad()
    def score(self, prompts: Sequence[str], outputs: Sequence[str], batch_size: int = 16) -> list[float]:
        self.model.eval()
        encoded = [self.encode(p, o) for p, o in zip(prompts, outputs, strict=True)]
        scores: list[float] = []
        pad = self.tokenizer.pad_token_id
        for start in range(0, len(encoded), batch_size):
            chunk = encoded[start : start + batch_size]
            width = max(len(ids) for ids in chunk)
            input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            attention = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, ids in enumerate(chunk):  # right padding, as in training (TRL's collator)
                input_ids[row, : len(ids)] = torch.tensor(ids)
                attention[row, : len(ids)] = 1
            logits = self.model(input_ids=input_ids.to(self.device), attention_mask=attention.to(self.device)).logits
            scores.extend(logits.squeeze(-1).float().tolist())
        return scores


class RMJudge(Judge):
    """A trained reward model as a judge: score = reward; compare = higher reward wins (order-free)."""

    name = "rm"

    def __init__(self, reward_model: RewardModel):
        self.rm = reward_model

    def score_many(
        self, prompts: Sequence[str], outputs: Sequence[str], profile: Profile | None = None,
        rubrics: Sequence[str | None] | None = None,
    ) -> list[JudgeScore]:
        return [JudgeScore(value, f"reward {value:.3f}") for value in self.rm.score(prompts, outputs)]


def split_pairs(pairs: Sequence[LabeledPair], heldout_fraction: float, seed: int) -> tuple[list, list]:
    """Non-tie pairs split into (train, held-out) by prompt (`splits.group_split`): two pairs of one prompt
    never straddle the two sides, so held-out accuracy is measured on prompts the RM never saw."""
    usable = [p for p in pairs if p.label != "tie"]
    train_idx, held_idx = group_split([p.prompt for p in usable], heldout_fraction, seed)
    return [usable[i] for i in train_idx], [usable[i] for i in held_idx]


def heldout_loss(rm: RewardModel, pairs: Sequence[LabeledPair]) -> float:
    """The Bradley-Terry loss (with each pair's margin, as in training) of `rm` on labeled non-tie pairs."""
    usable = [(p, p.chosen_rejected()) for p in pairs if p.label != "tie"]
    usable = [(p, cr) for p, cr in usable if cr is not None]
    if not usable:
        return float("nan")
    prompts = [p.prompt for p, _ in usable]
    chosen = torch.tensor(rm.score(prompts, [cr[0] for _, cr in usable]))
    rejected = torch.tensor(rm.score(prompts, [cr[1] for _, cr in usable]))
    with_margin = any(p.margin is not None for p, _ in usable)
    margin = torch.tensor([float(p.margin or 0.0) for p, _ in usable]) if with_margin else None
    return float(bradley_terry_loss(chosen, rejected, margin))


def pairwise_accuracy(rm: RewardModel, pairs: Sequence[LabeledPair]) -> float:
    chosen_rejected = [p.chosen_rejected() for p in pairs]
    chosen_rejected = [cr for cr in chosen_rejected if cr is not None]
    if not chosen_rejected:
        return float("nan")
    prompts = [p.prompt for p in pairs if p.label != "tie"]
    scores = rm.score(prompts * 2, [c for c, _ in chosen_rejected] + [r for _, r in chosen_rejected])
    n = len(chosen_rejected)
    return sum(scores[i] > scores[n + i] for i in range(n)) / n


def bt_score_loss(margins: torch.Tensor | None) -> ScoreLoss:
    """The Bradley-Terry loss as the engine's `ScoreLoss`: data = a batch's chosen inputs, then its rejected ones
    (one forward over both, as TRL's RewardTrainer does). Metrics: pair accuracy and mean reward margin."""

    def fn(data: Sequence[Datum], scores: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        chosen, rejected = scores.chunk(2)
        loss = bradley_terry_loss(chosen, rejected, None if margins is None else margins.to(scores.device))
        gap = (chosen - rejected).detach()
        return loss, {"accuracy": float((gap > 0).float().mean()), "margin": float(gap.mean())}

    return ScoreLoss(fn, name="bradley_terry")


def train_reward_model(
    pairs: Sequence[LabeledPair], config: RewardModelConfig, run_dir: RunDir, resume: bool = False,
    progress: bool = True, rm: RewardModel | None = None, heldout: Sequence[LabeledPair] | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> tuple[RewardModel, dict[str, Any]]:
    """Train a BT reward model into `run_dir`; returns it and a summary (held-out accuracy before/after).

    Runs through the engine protocol (`ScoreLoss` + `optim_step`) with TRL RewardTrainer's recipe: AdamW,
    linear decay from `learning_rate`, gradient norm clipped at 1, dropout off, chosen and rejected inputs
    right-padded into one forward. `rm` injects an already-built model (tests use a tiny one); `heldout`
    overrides the seeded split; `on_step(step, seconds)` is called after each optimizer step (benchmarks).
    """
    from personalign.engines.local import LocalEngine
    from personalign.methods.training import TrainConfig, TrainingSession, batch_indices
    from personalign.runs import seed_everything

    check_engine(config)
    seed_everything(config.seed)
    if heldout is None:
        train, heldout = split_pairs(pairs, config.heldout_fraction, config.seed)
    else:
        train = [p for p in pairs if p.label != "tie"]
    if len(train) < 2:
        raise PersonalignError(f"only {len(train)} non-tie training pairs; a reward model needs at least 2")
    rm = rm or RewardModel.fresh(config)
    before = pairwise_accuracy(rm, heldout) if heldout else float("nan")
    loss_before = heldout_loss(rm, heldout) if heldout else float("nan")
    # LoRA on every linear layer; the score head stays fully trainable (SEQ_CLS, see engines.local.apply_lora).
    lora = LoraSettings(enabled=config.lora, r=config.lora_r, alpha=config.lora_alpha, dropout=0.0,
                        target_modules=["all-linear"])
    engine = LocalEngine(rm, lora)
    encoded = [(rm.encode(p.prompt, cr[0]), rm.encode(p.prompt, cr[1]), p.margin)
               for p in train for cr in [p.chosen_rejected()] if cr is not None]
    with_margin = any(p.margin is not None for p in train)
    per_epoch = math.ceil(len(encoded) / config.batch_size)
    steps = config.max_steps if config.max_steps > 0 else math.ceil(config.epochs * per_epoch)
    session = TrainingSession(engine, TrainConfig(
        lr=config.learning_rate, lr_schedule="linear", grad_clip=1.0, batch_size=config.batch_size,
        max_steps=steps, checkpoint_every=config.save_every, seed=config.seed), run_dir.path)
    resumed_from = None
    if resume and session.restore() is not None:
        resumed_from = str(run_dir.path / "checkpoints" / f"step-{session.step:06d}")
    start = time.perf_counter()
    with Progress(transient=True, disable=not progress) as bar:
        task = bar.add_task("reward model", total=steps, completed=session.step)
        while session.step < steps:
            batch = [encoded[i] for i in batch_indices(len(encoded), config.batch_size, session.step, config.seed)]
            margins = torch.tensor([float(m or 0.0) for _, _, m in batch]) if with_margin else None
            data = [Datum(c, []) for c, _, _ in batch] + [Datum(r, []) for _, r, _ in batch]
            tick = time.perf_counter()
            out = session.update(data, bt_score_loss(margins))
            if on_step is not None:
                on_step(session.step, time.perf_counter() - tick)
            record: dict[str, Any] = {"loss": out.loss, **out.metrics, "learning_rate": session.lr_at(session.step - 1)}
            if heldout and (session.step % config.eval_every == 0 or session.step == steps):
                record.update(eval_accuracy=pairwise_accuracy(rm, heldout), eval_loss=heldout_loss(rm, heldout))
            run_dir.log_metrics(record, step=session.step)
            if session.step % config.save_every == 0 or session.step == steps:
                session.save()
            bar.update(task, completed=session.step, description=f"reward model loss {out.loss:.3f}")
    after = pairwise_accuracy(rm, heldout) if heldout else float("nan")
    loss_after = heldout_loss(rm, heldout) if heldout else float("nan")
    weights = run_dir.path / MODEL_DIR
    with atomic_dir(weights) as tmp:  # the layout `RewardModel.load` reads: weights (or adapter) + tokenizer
        rm.model.save_pretrained(tmp, safe_serialization=True)
        rm.tokenizer.save_pretrained(tmp)
    summary = {
        "backbone": config.backbone, "kind": rm.kind, "lora": config.lora, "max_length": config.max_length,
        "engine": engine.name, "train_pairs": len(train), "heldout_pairs": len(heldout),
        "heldout_accuracy_before": before, "heldout_accuracy": after, "heldout_loss_before": loss_before,
        "heldout_loss": loss_after, "steps": session.step, "train_seconds": time.perf_counter() - start,
        "resumed_from": resumed_from,
    }
    run_dir.write_json(RM_FILE, summary)
    write_training_data(run_dir.path, TrainingData.of([p.prompt for p in train],
                                                      [t for p in train for t in p.chosen_rejected() or ()]))
    run_dir.log_metrics({"final_heldout_accuracy": after}, step=session.step)
    return rm, summary
