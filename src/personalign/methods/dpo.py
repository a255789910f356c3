"""`dpo`: Direct Preference Optimization on pairwise data (`prompt, chosen, rejected` JSONL) with a LoRA adapter.

Reference policy = the model as training starts: the base model (a fresh LoRA adapter is the identity) or
the adapter given as `init_adapter` (e.g. an `sft` run's). Its log-probs are computed once before the first
step, since the data are fixed, which halves the forward passes per step (TRL's precompute_ref_log_probs).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from personalign.backends.base import Conversation
from personalign.engines.render import ChatRenderer
from personalign.errors import DataError, PersonalignError
from personalign.io import enumerate_jsonl
from personalign.methods.base import MethodConfig, Personalizer
from personalign.methods.training import (
    TrainConfig,
    TrainingSession,
    batch_indices,
    create_engine,
    datums,
    dpo_custom_loss,
    save_trained,
    sequence_sums,
    truncate_pair,
)
from personalign.profiles.schema import Profile
from personalign.runs import RunDir, seed_everything
from personalign.splits import read_training_data

PAIR_FIELDS = ("prompt", "chosen", "rejected")


class DPOConfig(MethodConfig, TrainConfig):
    pairs: str | None = Field(None, description="JSONL of {prompt, chosen, rejected}")
    beta: float = Field(0.1, gt=0, description="strength of the pull toward the reference policy")
    init_adapter: str | None = Field(None, description="start from (and use as reference) this LoRA adapter")
    lr: float = Field(5e-5, gt=0)
    max_steps: int = Field(40, ge=0)


def load_pairs(path: str | Path) -> list[dict[str, str]]:
    """Read and validate a pair file; a bad line stops with file:line, the missing field and the fix."""
    rows: list[dict[str, str]] = []
    for lineno, row in enumerate_jsonl(path):
        for key in PAIR_FIELDS:
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise DataError(
                    f"{path}:{lineno}: field {key!r} missing or empty; each line needs non-empty strings "
                    "'prompt', 'chosen' and 'rejected'"
                )
        rows.append({k: row[k] for k in PAIR_FIELDS})
    if not rows:
        raise DataError(f"{path}: no pairs; add lines of {{\"prompt\", \"chosen\", \"rejected\"}}")
    return rows


class DPOMethod(Personalizer):
    name = "dpo"
    config_class: ClassVar[type[MethodConfig]] = DPOConfig
    config: DPOConfig
    trainable: ClassVar[bool] = True

    @classmethod
    def quick_overrides(cls) -> dict[str, Any]:
        return {"max_steps": 12, "batch_size": 2, "max_length": 320, "checkpoint_every": 6}

    def conversation(self, prompt: str) -> Conversation:
        return [{"role": "user", "content": prompt}]

    def fit(self, profile: Profile, run_dir: RunDir | None = None) -> None:
        super().fit(profile, run_dir)
        cfg = self.config
        if not cfg.pairs:
            raise PersonalignError("method 'dpo': no pair file; pass --pairs PATH (JSONL of prompt, chosen, rejected)")
        rows = load_pairs(cfg.pairs)
        # A DPO that starts from an SFT adapter carries that run's training data too.
        start_from = Path(cfg.init_adapter) if cfg.init_adapter else None
        inherited = (read_training_data(start_from) or read_training_data(start_from.parent)) if start_from else None
        self.record_training([r["prompt"] for r in rows], [t for r in rows for t in (r["chosen"], r["rejected"])],
                             also=inherited)
        seed_everything(cfg.seed)
        engine = create_engine(self, cfg.lora, cfg.init_adapter)
        renderer = ChatRenderer(self.backend.tokenizer)  # type: ignore[attr-defined]

        def ids(prompt: str, completion: str) -> tuple[list[int], list[int]]:
            return truncate_pair(renderer.prompt_completion_ids(self.conversation(prompt), completion), cfg.max_length)

        chosen = [ids(r["prompt"], r["chosen"]) for r in rows]
        rejected = [ids(r["prompt"], r["rejected"]) for r in rows]
        # Reference = the starting weights, before any step (and before a resume loads later weights),
        # scored once: the data are fixed (TRL's precompute_ref_log_probs).
        ref_c, ref_r = sequence_sums(engine, chosen), sequence_sums(engine, rejected)
        session = TrainingSession(engine, cfg, run_dir.path if run_dir else None)
        if cfg.resume:
            session.restore()
        start = time.perf_counter()
        while session.step < cfg.max_steps:
            idx = batch_indices(len(rows), cfg.batch_size, session.step, cfg.seed)
            out = session.update(datums([chosen[i] for i in idx] + [rejected[i] for i in idx]),
                                 dpo_custom_loss(ref_c[idx], ref_r[idx], cfg.beta))
            if run_dir is not None:
                stats = {k: v for k, v in out.metrics.items() if k != "grad_norm"}
                run_dir.log_metrics({"phase": "dpo", "loss": out.loss, **stats}, step=session.step)
                if session.step % cfg.checkpoint_every == 0 or session.step == cfg.max_steps:
                    session.save()
        if run_dir is not None:
            run_dir.log_metrics({"phase": "dpo_done", "steps": session.step, "pairs": len(rows),
                                 "seconds": round(time.perf_counter() - start, 2)})
            save_trained(self, run_dir, engine)
