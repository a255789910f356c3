"""`sft`: LoRA supervised fine-tuning on the demonstrations plus filtered synthetic data.

Loss on assistant tokens only (the engine's `CrossEntropy` over completion ids; prompt ids are never
scored), early stopping on a held-out split, a checkpoint every K steps and exact `--resume`. The loop lives
here as `run_sft` because DITTO's warm start is the same training; it talks only to a `TrainingEngine`.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import Field

from personalign.backends.base import Conversation
from personalign.engines.base import ATTENTION_AND_MLP, CrossEntropy, LoraSettings, TrainingEngine
from personalign.engines.render import ChatRenderer
from personalign.errors import ProfileError
from personalign.methods.base import MethodConfig, Personalizer
from personalign.methods.synthetic import (
    SYNTHETIC_FILE,
    SyntheticConfig,
    generate_synthetic,
    load_synthetic,
    save_synthetic,
)
from personalign.methods.training import (
    Pair,
    TrainConfig,
    TrainingSession,
    batch_indices,
    create_engine,
    datums,
    save_trained,
    state_dir,
    truncate_pair,
)
from personalign.profiles.schema import Profile
from personalign.progress import Progress
from personalign.runs import RunDir, seed_everything

LogFn = Callable[[dict[str, Any], int], None]


class SFTConfig(MethodConfig, TrainConfig):
    max_steps: int = Field(60, ge=0)
    # Chosen by the recorded sweep on two profiles (bench/sweep_sft.py): 2e-4 without warm-up left the loss at
    # 1.7 after the quick run's 24 steps and no output signed off; 5e-4 after 3 warm-up steps learned the format.
    lr: float = Field(5e-4, gt=0)
    # Attention and MLP: attention-only LoRA at the quick settings never learned the example profile's sign-off.
    lora: LoraSettings = Field(default_factory=lambda: LoraSettings(target_modules=ATTENTION_AND_MLP))
    warmup_steps: int = Field(3, ge=0, description="linear warm-up from lr/warmup_steps to lr")
    # Off by default: the demonstrations plus ~16 synthetic rows would hold out 3-4 rows, too few for a held-out loss
    # to mean anything (the early stop used to fire on 2 rows). Turn it on (0.2) with 50+ rows of real data.
    val_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="share held out for early stopping; 0 = off")
    eval_every: int = Field(5, ge=1, description="steps between held-out evaluations")
    patience: int = Field(3, ge=1, description="evaluations without improvement before stopping")
    stop_below_loss: float | None = Field(None, gt=0, description="stop once a step's train loss is below this "
                                          "(DITTO's warm start: 1.0); max_steps stays the cap")
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)
    synthetic_data: str | None = Field(None, description="reuse this synthetic JSONL instead of generating")


def split_holdout(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, held-out) indices; nothing is held out below 4 rows (too little to learn from)."""
    if n < 4 or fraction <= 0:
        return list(range(n)), []
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = max(1, round(n * fraction))
    return sorted(perm[n_val:]), sorted(perm[:n_val])


def mean_loss(engine: TrainingEngine, pairs: Sequence[Pair], batch_size: int) -> float:
    """Token-weighted mean cross-entropy of `pairs` (no gradient, no dropout)."""
    total, tokens = 0.0, 0
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        n = sum(len(c) for _, c in chunk)
        total += engine.forward(datums(chunk), CrossEntropy()).result().loss * n
        tokens += n
    return total / max(1, tokens)


def run_sft(
    engine: TrainingEngine, pairs: Sequence[Pair], config: SFTConfig, root: Path | None,
    log: LogFn | None = None, phase: str = "sft", progress: bool = True,
) -> dict[str, Any]:
    """Train the engine's model on (prompt ids, completion ids) pairs; resumable from `root`.

    One forward_backward + optim_step per batch; early stopping keeps the best held-out weights (saved as
    engine state under `root/best/`).
    """
    train_idx, val_idx = split_holdout(len(pairs), config.val_fraction, config.seed)
    train = [pairs[i] for i in train_idx]
    val = [pairs[i] for i in val_idx]
    session = TrainingSession(engine, config, root)
    extra = (session.restore() if config.resume else None) or {}
    best_val: float | None = extra.get("best_val")
    bad_evals: int = extra.get("bad_evals", 0)
    stopped: bool = extra.get("stopped", False)
    scratch = tempfile.TemporaryDirectory(prefix="sft-best-") if root is None else None
    best_dir = (Path(scratch.name) if scratch is not None else root) / "best"  # type: ignore[operator]
    start = time.perf_counter()
    with Progress(transient=True, disable=not progress) as bar:
        task = bar.add_task(phase, total=config.max_steps, completed=session.step)
        while session.step < config.max_steps and not stopped:
            batch = [train[i] for i in batch_indices(len(train), config.batch_size, session.step, config.seed)]
            loss = session.update(datums(batch), CrossEntropy()).loss
            record: dict[str, Any] = {"phase": phase, "loss": loss, "lr": session.lr_at(session.step)}
            if config.stop_below_loss is not None and loss < config.stop_below_loss:
                stopped = True
                record["stopped_below_loss"] = True
            if val and session.step % config.eval_every == 0:
                val_loss = mean_loss(engine, val, config.batch_size)
                record["val_loss"] = val_loss
                if best_val is None or val_loss < best_val:
                    best_val, bad_evals = val_loss, 0
                    with state_dir(engine, best_dir) as tmp:
                        engine.save_state(tmp, optimizer=False)
                else:
                    bad_evals += 1
                    stopped = bad_evals >= config.patience
                    record["early_stop"] = stopped
            if log is not None:
                log(record, session.step)
            if session.step % config.checkpoint_every == 0 or stopped or session.step == config.max_steps:
                session.save({"best_val": best_val, "bad_evals": bad_evals, "stopped": stopped})
            bar.update(task, completed=session.step, description=f"{phase} loss {loss:.3f}")
    if best_val is not None and best_dir.is_dir():
        engine.load_state(best_dir, optimizer=False)  # early stopping keeps the best held-out weights
    if scratch is not None:
        scratch.cleanup()
    return {"steps": session.step, "best_val_loss": best_val, "early_stopped": stopped,
            "train_rows": len(train), "val_rows": len(val), "seconds": round(time.perf_counter() - start, 2)}


class SFTMethod(Personalizer):
    name = "sft"
    config_class: ClassVar[type[MethodConfig]] = SFTConfig
    config: SFTConfig
    trainable: ClassVar[bool] = True

    @classmethod
    def quick_overrides(cls) -> dict[str, Any]:
        # ≈2 minutes on 2 CPU cores with the default model: a little synthetic data, 24 short steps. best_of 2
        # keeps the teacher's 8 samples what the old prompt-then-output generation cost.
        return {"max_steps": 24, "batch_size": 4, "max_length": 320, "eval_every": 6, "checkpoint_every": 12,
                "synthetic": {"n_candidates": 4, "n_keep": 4, "best_of": 2, "max_new_tokens": 160, "fewshot_k": 2}}

    def training_rows(self, profile: Profile, run_dir: RunDir | None) -> list[dict[str, Any]]:
        """Demonstrations plus synthetic rows (reused from a file, from the run dir on resume, or generated)."""
        if not profile.demonstrations:
            raise ProfileError(
                f"profile {profile.name!r}: field 'demonstrations' is empty; add {{prompt, output}} pairs"
            )
        rows: list[dict[str, Any]] = [{"prompt": d.prompt, "output": d.output, "source": "demonstration"}
                                      for d in profile.demonstrations]
        cfg = self.config
        existing = run_dir.path / SYNTHETIC_FILE if run_dir is not None else None
        if cfg.synthetic_data:
            return rows + load_synthetic(cfg.synthetic_data)
        if cfg.resume and existing is not None and existing.is_file():
            return rows + load_synthetic(existing)
        if cfg.synthetic.n_keep == 0 or cfg.synthetic.n_candidates == 0:
            return rows
        teacher = self.backend
        if cfg.synthetic.teacher is not None:
            from personalign.backends.registry import build_backend

            teacher = build_backend(cfg.synthetic.teacher)
        synthetic, report = generate_synthetic(profile, teacher, cfg.synthetic, progress=True)
        if run_dir is not None and run_dir.writer:
            save_synthetic(run_dir.path, synthetic, report)
            run_dir.log_metrics({"phase": "synthetic", **{k: v for k, v in report.items() if k != "teacher"}})
        return rows + synthetic

    def fit(self, profile: Profile, run_dir: RunDir | None = None) -> None:
        super().fit(profile, run_dir)
        seed_everything(self.config.seed)
        rows = self.training_rows(profile, run_dir)
        self.record_training([r["prompt"] for r in rows], [r["output"] for r in rows])
        engine = create_engine(self, self.config.lora)
        renderer = ChatRenderer(self.backend.tokenizer)  # type: ignore[attr-defined]
        # Each process of a multi-process engine sampled its own synthetic rows: all train on the main one's.
        pairs = engine.broadcast([truncate_pair(renderer.prompt_completion_ids(self.conversation(r["prompt"]),
                                                                              r["output"]), self.config.max_length)
                                  for r in rows])
        log = run_dir.log_metrics if run_dir is not None else None
        stats = run_sft(engine, pairs, self.config, run_dir.path if run_dir else None, log)
        if run_dir is not None:
            run_dir.log_metrics({"phase": "sft_done", **stats})
            save_trained(self, run_dir, engine)

    def conversation(self, prompt: str) -> Conversation:
        # The style lives in the weights: training and generation both see the bare user prompt.
        return [{"role": "user", "content": prompt}]
