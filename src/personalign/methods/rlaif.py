"""`rlaif`: GRPO with LoRA against a weighted mix of AI-feedback rewards, with reward-hacking diagnostics.

Each step samples a group of G completions for each of B prompts from the policy, scores them with the
reward mix, turns rewards into group-normalized advantages (r − mean_group) / (std_group + ε), and takes
one policy-gradient step on  −A·log π(y_t)  plus β · KL(π ‖ π_ref) per token (k3 estimator, as in GRPO);
the reference policy is the base model (the LoRA adapter switched off). Every `eval_every` steps the
policy answers held-out prompts greedily and both the optimized reward and an evaluator that is *not*
optimized score them, so `evaluation.hacking` can flag where the two diverge.

Why a plain torch loop rather than TRL's GRPOTrainer: the step must be split into sampling, reward and
optimization time and logged with text diagnostics inside the step; tokens must come from
`backend.prompt_completion_ids` (GRPOTrainer renders chats itself); and rewards such as the pairwise
win rate need the frozen reference policy inside the reward. The loop is one on-policy update per batch,
so GRPO's clipped ratio is exactly 1 and drops out. LoRA, checkpoints and resume come from `training.py`.

Reward spec: comma list of `kind:weight` (or `rm:RUN_DIR[:weight]`), e.g. `rm:runs/rm-1,rules:0.5,length:0.2`.
Kinds: `rm` (a trained reward model's score), `rules` (share of constraint checks + reward-hacking tells
passed), `pairwise` (win rate against a reference-model sample, judge asked both orders), `length`
(0 inside the profile's word range, down to −1 outside it).
"""

from __future__ import annotations

import contextlib
import copy
import math
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, field_validator

from personalign.backends.base import Conversation, GenerationBackend
from personalign.config import SamplingConfig
from personalign.errors import PersonalignError, ProfileError
from personalign.methods.base import MethodConfig, Personalizer
from personalign.methods.training import (
    LoraSettings,
    TrainConfig,
    TrainingSession,
    apply_lora,
    require_trainable,
    save_trained,
)
from personalign.profiles.schema import Profile
from personalign.runs import RunDir, seed_everything

REWARD_KINDS = ("rm", "rules", "pairwise", "length")
SUMMARY_FILE = "rl_summary.json"
PLOT_FILE = "hacking.png"


@dataclass(frozen=True)
class RewardTerm:
    kind: str
    weight: float
    path: str | None = None  # rm only


def parse_reward_spec(spec: str) -> list[RewardTerm]:
    """'rm:DIR,rules:0.5' → [RewardTerm('rm', 1.0, 'DIR'), RewardTerm('rules', 0.5)]; errors say the valid form."""
    terms = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        kind, _, rest = part.partition(":")
        kind = kind.strip()
        if kind not in REWARD_KINDS:
            raise PersonalignError(
                f"reward {part!r}: unknown kind {kind!r}; use {', '.join(REWARD_KINDS)} as kind:weight "
                "(rm:RUN_DIR[:weight]), e.g. --reward rm:runs/rm-1,rules:0.5"
            )
        if kind == "rm":
            path, weight = rest, 1.0
            head, _, tail = rest.rpartition(":")
            with contextlib.suppress(ValueError):
                weight, path = float(tail), head
            if not path:
                raise PersonalignError(f"reward {part!r}: rm needs its run dir, e.g. rm:runs/reward-20260101-1200")
            terms.append(RewardTerm("rm", weight, path))
            continue
        try:
            weight = float(rest) if rest else 1.0
        except ValueError:
            raise PersonalignError(f"reward {part!r}: weight {rest!r} is not a number; e.g. rules:0.5") from None
        terms.append(RewardTerm(kind, weight))
    if not terms:
        raise PersonalignError("reward spec is empty; e.g. --reward rules:1 or --reward rm:RUN_DIR,rules:0.5")
    return terms


def group_advantages(rewards: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """GRPO advantages of a (prompts, group) reward matrix: (r − group mean) / (group std + eps).

    The std is the unbiased one (as TRL's GRPOTrainer); a group whose rewards are all equal gets 0.
    """
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True) if rewards.shape[1] > 1 else torch.zeros_like(mean)
    return (rewards - mean) / (std + eps)


def token_logprobs(model: Any, pairs: Sequence[tuple[list[int], list[int]]], pad_id: int,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log p of each completion token and its mask, shape (batch, longest completion).

    `backends.hf.sequence_logprobs` sums over tokens; GRPO's per-token KL needs them unsummed. Left-padded
    (as in generation, with matching position ids) so every completion ends at the right edge and the
    vocabulary projection runs only over the last completion-length positions (`logits_to_keep`): with a
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


def grpo_loss(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor,
              beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, mean KL). Per token: −exp(logp − logp.detach())·A + β·(exp(ref − logp) − (ref − logp) − 1),
    averaged over each completion's tokens, then over completions (GRPO's sequence-mean form).

    The ratio is 1 in value but carries the gradient ∇logp·A; the KL term is the unbiased, non-negative k3.
    """
    mask = mask.float()
    ratio = torch.exp(logp - logp.detach())
    delta = ref_logp - logp
    kl = torch.exp(delta) - delta - 1
    per_token = -ratio * advantages.unsqueeze(1) + beta * kl
    lengths = mask.sum(dim=1).clamp(min=1)
    loss = ((per_token * mask).sum(dim=1) / lengths).mean()
    mean_kl = ((kl * mask).sum(dim=1) / lengths).mean()
    return loss, mean_kl.detach()


def length_penalty(words: int, min_words: int | None, max_words: int | None) -> float:
    """0 inside [min_words, max_words]; the relative overshoot below/above it, negated, floored at −1."""
    if max_words is not None and words > max_words:
        return -min(1.0, (words - max_words) / max_words)
    if min_words is not None and words < min_words:
        return -min(1.0, (min_words - words) / max(1, min_words))
    return 0.0


class RLAIFConfig(MethodConfig, TrainConfig):
    reward: str = Field("rules:1", description="weighted reward mix, e.g. 'rm:RUN_DIR,rules:0.5,length:0.2'")
    # No LoRA dropout: the policy's log-probs (train mode) and the reference's (eval mode) must be comparable.
    lora: LoraSettings = Field(default_factory=lambda: LoraSettings(dropout=0.0))
    max_steps: int = Field(40, ge=0, description="GRPO steps")
    batch_size: int = Field(2, ge=1, description="prompts per step")
    group_size: int = Field(4, ge=2, description="samples per prompt (the GRPO group)")
    lr: float = Field(5e-5, gt=0)
    beta: float = Field(0.04, ge=0, description="KL coefficient to the reference (base) policy")
    max_new_tokens: int = Field(160, ge=1)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    system_prompt: bool = Field(True, description="put the profile's rules in a system prompt (as `prompt` does)")
    heldout: str = Field("auto", description="evaluator that is NOT optimized: auto | rules | rm:RUN_DIR | none")
    heldout_prompts: int = Field(4, ge=0, description="last K eval prompts kept out of training for evaluation")
    eval_every: int = Field(5, ge=1, description="steps between held-out evaluations")
    window: int = Field(3, ge=1, description="consecutive diverging evaluations that flag reward hacking")
    pairwise_judge: Literal["llm", "rules"] = Field("llm", description="judge of the pairwise reward term")

    @field_validator("reward")
    @classmethod
    def _valid_reward(cls, value: str) -> str:
        parse_reward_spec(value)
        return value


class _ReferenceBackend(GenerationBackend):
    """The policy's backend with the LoRA adapter switched off: the frozen reference policy as a backend."""

    name = "reference"

    def __init__(self, inner: Any, reference: Callable[[], contextlib.AbstractContextManager[Any]]):
        self.inner = inner
        self.reference = reference

    def generate(self, conversations: Sequence[Conversation], sampling: SamplingConfig,
                 progress: bool = False) -> list[list[str]]:
        with self.reference():
            return self.inner.generate(conversations, sampling, progress=progress)

    def logprobs(self, conversations: Sequence[Conversation], completions: Sequence[str]) -> list[float]:
        with self.reference():
            return self.inner.logprobs(conversations, completions)


class RewardMix:
    """Weighted sum of reward terms; returns the total and each term per text."""

    def __init__(self, terms: Sequence[RewardTerm], profile: Profile, reference: GenerationBackend,
                 conversation: Callable[[str], Conversation], pairwise_judge: str = "llm", seed: int = 0,
                 max_new_tokens: int = 160):
        self.terms = list(terms)
        self.profile = profile
        self.reference = reference
        self.conversation = conversation
        self._rms: dict[str, Any] = {}
        self._base_samples: dict[str, str] = {}
        self.pairwise_judge = pairwise_judge
        self.seed = seed
        self.max_new_tokens = max_new_tokens
        self.last_unparseable = 0.0

    def _rm(self, path: str) -> Any:
        if path not in self._rms:
            from personalign.judges.reward_model import RewardModel

            self._rms[path] = RewardModel.load(path)
        return self._rms[path]

    def _pairwise(self, prompts: Sequence[str], texts: Sequence[str]) -> list[float]:
        """Win rate (1 win, ½ tie, 0 loss) of each text against one reference sample for its prompt.

        An unparseable verdict scores ½ (no information) and is reported as `pairwise_unparseable`.
        """
        missing = sorted({p for p in prompts if p not in self._base_samples})
        if missing:
            sampling = SamplingConfig(temperature=0.7, max_new_tokens=self.max_new_tokens, seed=self.seed)
            outs = self.reference.generate([self.conversation(p) for p in missing], sampling)
            self._base_samples.update({p: o[0] for p, o in zip(missing, outs, strict=True)})
        if self.pairwise_judge == "llm":
            from personalign.judges.llm import LLMJudge

            judge: Any = LLMJudge(self.reference)
        else:
            from personalign.judges.base import RulesJudge

            judge = RulesJudge()
        verdicts = judge.compare_many(list(prompts), list(texts), [self._base_samples[p] for p in prompts],
                                      self.profile)
        self.last_unparseable = sum(v.winner is None for v in verdicts) / max(1, len(verdicts))
        return [{"A": 1.0, "B": 0.0}.get(v.winner, 0.5) if v.winner is not None else 0.5 for v in verdicts]

    def term_values(self, term: RewardTerm, prompts: Sequence[str], texts: Sequence[str]) -> list[float]:
        from personalign.judges.rules import count_words, rule_score

        c = self.profile.constraints
        if term.kind == "rules":
            return [rule_score(t, c) for t in texts]
        if term.kind == "length":
            return [length_penalty(count_words(t), c.min_words, c.max_words) for t in texts]
        if term.kind == "rm":
            assert term.path is not None
            return self._rm(term.path).score(list(prompts), list(texts))
        return self._pairwise(prompts, texts)

    def __call__(self, prompts: Sequence[str], texts: Sequence[str]) -> tuple[list[float], dict[str, list[float]]]:
        parts: dict[str, list[float]] = {}
        total = [0.0] * len(texts)
        for term in self.terms:
            key = f"reward_{term.kind}" if term.kind not in parts and f"reward_{term.kind}" not in parts else \
                f"reward_{term.kind}_{len(parts)}"
            values = self.term_values(term, prompts, texts)
            parts[key] = values
            total = [acc + term.weight * v for acc, v in zip(total, values, strict=True)]
        return total, parts


Evaluator = Callable[[list[str], list[str]], float]


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else float("nan")


class RLAIFMethod(Personalizer):
    name = "rlaif"
    config_class: ClassVar[type[MethodConfig]] = RLAIFConfig
    config: RLAIFConfig
    trainable: ClassVar[bool] = True

    @classmethod
    def quick_overrides(cls) -> dict[str, Any]:
        # A few minutes on 2 CPU cores with the default model: 12 steps of 2 prompts × 4 short samples.
        return {"max_steps": 12, "batch_size": 2, "group_size": 4, "max_new_tokens": 96, "eval_every": 3,
                "heldout_prompts": 2, "checkpoint_every": 6}

    def conversation(self, prompt: str) -> Conversation:
        if self.config.system_prompt and self.profile is not None:
            from personalign.methods.prompting import system_prompt

            return [{"role": "system", "content": system_prompt(self.profile, include_rules=True)},
                    {"role": "user", "content": prompt}]
        return [{"role": "user", "content": prompt}]

    def split_prompts(self, profile: Profile) -> tuple[list[str], list[str]]:
        """(training prompts, held-out prompts): demonstrations' and eval prompts, the last K eval prompts held out."""
        evals = [p.prompt for p in profile.eval_prompts]
        k = min(self.config.heldout_prompts, max(0, len(evals) - 1))
        held = evals[len(evals) - k :] if k else []
        train = list(dict.fromkeys([d.prompt for d in profile.demonstrations] + evals[: len(evals) - k]))
        if not train:
            raise ProfileError(f"profile {profile.name!r}: no prompts to train on; add demonstrations or eval_prompts")
        return train, held

    def _heldout_evaluator(self, terms: Sequence[RewardTerm]) -> tuple[str, Evaluator] | None:
        choice = self.config.heldout
        optimized = {t.kind for t in terms}
        if choice == "auto":
            choice = "rules" if "rules" not in optimized else "none"
        if choice == "none":
            return None
        assert self.profile is not None
        constraints = self.profile.constraints
        if choice == "rules":
            from personalign.judges.rules import rule_score

            return "rules", lambda prompts, texts: _mean([rule_score(t, constraints) for t in texts])
        if choice.startswith("rm:"):
            from personalign.judges.reward_model import RewardModel

            rm = RewardModel.load(choice[3:])
            return choice, lambda prompts, texts: _mean(rm.score(prompts, texts))
        raise PersonalignError(f"heldout {self.config.heldout!r}: use auto, rules, rm:RUN_DIR or none")

    @contextlib.contextmanager
    def _reference(self) -> Iterator[None]:
        model = self.backend.model  # type: ignore[attr-defined]
        if hasattr(model, "disable_adapter"):
            with model.disable_adapter():
                yield
        else:  # full fine-tuning: swap the frozen copy in
            self.backend.model, saved = self._ref_model, model  # type: ignore[attr-defined]
            try:
                yield
            finally:
                self.backend.model = saved  # type: ignore[attr-defined]

    def fit(self, profile: Profile, run_dir: RunDir | None = None, progress: bool = True) -> None:
        super().fit(profile, run_dir)
        backend = require_trainable(self.backend, self.name)
        cfg = self.config
        seed_everything(cfg.seed)
        terms = parse_reward_spec(cfg.reward)
        train_prompts, held_prompts = self.split_prompts(profile)
        run = run_dir or RunDir(tempfile.mkdtemp(prefix="rlaif-"))
        if not cfg.lora.enabled:
            self._ref_model = copy.deepcopy(backend.model).eval()
            for p in self._ref_model.parameters():
                p.requires_grad_(False)
        backend.model = apply_lora(backend.model, cfg.lora)
        model = backend.model
        reference = _ReferenceBackend(backend, self._reference)
        reward = RewardMix(terms, profile, reference, self.conversation, cfg.pairwise_judge, cfg.seed,
                           cfg.max_new_tokens)
        evaluator = self._heldout_evaluator(terms)
        session = TrainingSession(model, cfg, run.path if run_dir is not None else None)
        if cfg.resume:
            session.restore()
        pad_id = backend.tokenizer.pad_token_id
        sampling = SamplingConfig(n=cfg.group_size, temperature=cfg.temperature, top_p=cfg.top_p,
                                  max_new_tokens=cfg.max_new_tokens)
        bar_ctx: Any = contextlib.nullcontext()
        if progress:
            from rich.progress import Progress

            bar_ctx = Progress(transient=True)
        with bar_ctx as bar:
            task = bar.add_task("rlaif", total=cfg.max_steps, completed=session.step) if bar is not None else None
            while session.step < cfg.max_steps:
                record = self._step(session, train_prompts, reward, sampling, pad_id)
                step = session.step
                if evaluator is not None and held_prompts and (step % cfg.eval_every == 0 or step == cfg.max_steps
                                                               or step == 1):
                    record.update(self._evaluate(held_prompts, reward, evaluator))
                run.log_metrics(record, step=step)
                if step % cfg.checkpoint_every == 0 or step == cfg.max_steps:
                    session.save()
                if bar is not None:
                    bar.update(task, completed=step, description=f"rlaif reward {record['reward']:.3f}")
        model.eval()
        self.summary = self._summarize(run, evaluator[0] if evaluator else None, progress)
        if run_dir is not None:
            save_trained(self, run_dir, model)

    def _step(self, session: TrainingSession, train_prompts: list[str], reward: RewardMix,
              sampling: SamplingConfig, pad_id: int) -> dict[str, Any]:
        from personalign.evaluation.hacking import text_diagnostics
        from personalign.methods.training import batch_indices

        cfg, backend, model = self.config, self.backend, self.backend.model  # type: ignore[attr-defined]
        assert self.profile is not None
        prompts = [train_prompts[i] for i in batch_indices(len(train_prompts), cfg.batch_size, session.step, cfg.seed)]
        t0 = time.perf_counter()
        model.eval()
        groups = backend.generate([self.conversation(p) for p in prompts],
                                  sampling.model_copy(update={"seed": cfg.seed * 7919 + session.step}))
        flat_prompts = [p for p, g in zip(prompts, groups, strict=True) for _ in g]
        texts = [t for g in groups for t in g]
        t1 = time.perf_counter()
        totals, parts = reward(flat_prompts, texts)
        t2 = time.perf_counter()
        rewards = torch.tensor(totals, dtype=torch.float32).view(len(prompts), cfg.group_size)
        advantages = group_advantages(torch.nan_to_num(rewards, nan=0.0)).view(-1)
        pairs = [backend.prompt_completion_ids(self.conversation(p), t)  # type: ignore[attr-defined]
                 for p, t in zip(flat_prompts, texts, strict=True)]
        pairs = [(p, c[: cfg.max_new_tokens + 1]) for p, c in pairs]
        with torch.no_grad(), self._reference():
            ref_logp, _ = token_logprobs(backend.model, pairs, pad_id, backend.device)  # type: ignore[attr-defined]
        model.train()
        logp, mask = token_logprobs(model, pairs, pad_id, backend.device)  # type: ignore[attr-defined]
        loss, kl = grpo_loss(logp, ref_logp, mask, advantages.to(logp.device), cfg.beta)
        loss_value = session.update(loss)
        model.eval()
        t3 = time.perf_counter()
        record: dict[str, Any] = {
            "phase": "rlaif", "loss": loss_value, "reward": _mean(totals), "kl": float(kl),
            **{k: _mean(v) for k, v in parts.items()},
            **text_diagnostics(texts, self.profile.constraints),
            "seconds_sampling": t1 - t0, "seconds_reward": t2 - t1, "seconds_optimization": t3 - t2,
        }
        if any(t.kind == "pairwise" for t in reward.terms):
            record["pairwise_unparseable"] = reward.last_unparseable
        return record

    def _evaluate(self, prompts: list[str], reward: RewardMix,
                  evaluator: tuple[str, Evaluator]) -> dict[str, Any]:
        """Greedy answers to the held-out prompts, scored by the optimized reward and the held-out evaluator."""
        sampling = SamplingConfig(temperature=0.0, max_new_tokens=self.config.max_new_tokens)
        texts = [g[0] for g in self.backend.generate([self.conversation(p) for p in prompts], sampling)]
        totals, _ = reward(prompts, texts)
        return {"eval_reward": _mean(totals), "heldout": evaluator[1](prompts, texts),
                "heldout_evaluator": evaluator[0]}

    def _summarize(self, run: RunDir, evaluator: str | None, progress: bool = False) -> dict[str, Any]:
        from personalign.evaluation.hacking import detect_divergence, plot_diagnostics

        records = _last_per_step([r for r in run.metrics if r.get("phase") == "rlaif"])
        divergence = detect_divergence(records, window=self.config.window, reward_key="eval_reward")
        if evaluator is None:
            verdict = "no held-out evaluator (the optimized reward includes rules); hacking not checked"
        elif divergence is None:
            verdict = f"no reward hacking detected: {evaluator} held-out score did not fall while the reward rose"
        else:
            verdict = divergence.message
        summary: dict[str, Any] = {
            "steps": records[-1]["step"] if records else 0, "heldout_evaluator": evaluator,
            "divergence": divergence.as_dict() if divergence else None, "verdict": verdict,
            "first": records[0] if records else None, "last": records[-1] if records else None,
        }
        if records:
            summary["plot"] = str(plot_diagnostics(records, run.path / PLOT_FILE, divergence,
                                                   reward_key="reward"))
        run.write_json(SUMMARY_FILE, summary)
        run.log_metrics({"phase": "rlaif_done", "verdict": verdict})
        if progress:
            from rich.console import Console

            Console(stderr=True).print(f"rlaif: {verdict} (diagnostics plot: {run.path / PLOT_FILE})", highlight=False)
        return summary


def _last_per_step(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """After a resume the steps past the last checkpoint are logged twice; keep each step's newest row."""
    by_step: dict[int, dict[str, Any]] = {}
    for record in records:
        by_step[int(record["step"])] = record
    return [by_step[s] for s in sorted(by_step)]
