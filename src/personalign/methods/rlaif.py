"""`rlaif`: GRPO with LoRA against a weighted mix of AI-feedback rewards, with reward-hacking diagnostics.

Each step samples a group of G completions for each of B prompts from the policy, scores them with the
reward mix, turns rewards into group-normalized advantages (r − mean_group) / (std_group + ε), and takes
one policy-gradient step through the engine's `PolicyLoss` (−A·ρ per token, ρ the importance ratio, plus
β · KL(π ‖ π_ref), k3 estimator, as in GRPO); the reference policy is the engine's snapshot of the starting
weights (the base model: a fresh LoRA adapter is the identity). A reward that is not finite is left out of
its group's mean and std and gets advantage 0. A sample cut at the token limit is trained on without an
end-of-turn token it never produced (so stopping is not rewarded by accident). Every `eval_every` steps the
policy answers held-out prompts greedily and both the optimized reward and an evaluator that is *not*
optimized score them, so `evaluation.hacking` can flag where the two diverge.

Why a plain torch loop rather than TRL's GRPOTrainer: the step must be split into sampling, reward and
optimization time and logged with text diagnostics inside the step; tokens must come from the
client-side renderer (GRPOTrainer renders chats itself); and rewards such as the pairwise win rate need
the frozen reference policy inside the reward. The loop is one on-policy update per batch, so GRPO's
clipped ratio is exactly 1 and drops out. Engine, checkpoints and resume come from `training.py`.

Reward spec: comma list of `kind:weight` (or `rm:RUN_DIR[:weight]`, `gen-rm:RUN_DIR[:weight]`), e.g.
`rm:runs/rm-1,rules:0.5,length:0.2`. Kinds: `rm` (a trained reward model's score), `gen-rm` (a trained
generative judge's probability that the text beats a reference-model sample, both orders averaged: the
cookbook's preference reward against a fixed opponent rather than a within-group tournament, so it also
scores the single greedy answer of the hacking monitor), `rules` (share of constraint checks + reward-hacking tells
passed), `pairwise` (win rate against a reference-model sample, judge asked both orders), `length`
(0 inside the profile's word range, down to −1 outside it).
"""

from __future__ import annotations

import contextlib
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, field_validator

from personalign.backends.base import Conversation, GenerationBackend
from personalign.config import SamplingConfig
from personalign.engines.base import Datum, PolicyLoss, SamplingClient
from personalign.engines.render import ChatRenderer
from personalign.engines.vllm_sampler import SamplerFields, policy_sampler
from personalign.errors import PersonalignError, ProfileError
from personalign.methods.base import MethodConfig, Personalizer
from personalign.methods.training import (
    LoraSettings,
    TrainConfig,
    TrainingSession,
    create_engine,
    datums,
    save_trained,
    sequence_sums,
)
from personalign.profiles.schema import Profile
from personalign.progress import Progress
from personalign.runs import RunDir, seed_everything

REWARD_KINDS = ("rm", "gen-rm", "rules", "pairwise", "length")
RUN_DIR_KINDS = ("rm", "gen-rm")  # reward terms that name the run dir of a trained judge
SUMMARY_FILE = "rl_summary.json"
PLOT_FILE = "hacking.png"


@dataclass(frozen=True)
class RewardTerm:
    kind: str
    weight: float
    path: str | None = None  # rm and gen-rm only


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
                "(rm:RUN_DIR[:weight], gen-rm:RUN_DIR[:weight]), e.g. --reward rm:runs/rm-1,rules:0.5"
            )
        if kind in RUN_DIR_KINDS:
            path, weight = rest, 1.0
            head, _, tail = rest.rpartition(":")
            with contextlib.suppress(ValueError):
                weight, path = float(tail), head
            if not path:
                raise PersonalignError(f"reward {part!r}: {kind} needs its run dir, e.g. "
                                       f"{kind}:runs/reward-20260101-1200")
            terms.append(RewardTerm(kind, weight, path))
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

    The std is the unbiased one (as TRL's GRPOTrainer); a group whose rewards are all equal gets 0. Non-finite
    rewards (a reward term that failed) are left out of their group's mean and std and get advantage 0,
    rather than counting as a reward of 0 that would shift the others.
    """
    finite = torch.isfinite(rewards)
    filled = torch.where(finite, rewards, torch.zeros_like(rewards))
    if bool(finite.all()):  # torch's own mean/std: the exact values of runs before non-finite handling
        mean = rewards.mean(dim=1, keepdim=True)
        std = rewards.std(dim=1, keepdim=True) if rewards.shape[1] > 1 else torch.zeros_like(mean)
        return (rewards - mean) / (std + eps)
    count = finite.sum(dim=1, keepdim=True)
    mean = filled.sum(dim=1, keepdim=True) / count.clamp(min=1)
    sq = torch.where(finite, (filled - mean) ** 2, torch.zeros_like(rewards)).sum(dim=1, keepdim=True)
    std = torch.where(count > 1, torch.sqrt(sq / (count - 1).clamp(min=1)), torch.zeros_like(mean))
    return torch.where(finite, (filled - mean) / (std + eps), torch.zeros_like(rewards))


def length_penalty(words: int, min_words: int | None, max_words: int | None) -> float:
    """0 inside [min_words, max_words]; the relative overshoot below/above it, negated, floored at −1."""
    if max_words is not None and words > max_words:
        return -min(1.0, (words - max_words) / max_words)
    if min_words is not None and words < min_words:
        return -min(1.0, (min_words - words) / max(1, min_words))
    return 0.0


class RLAIFConfig(MethodConfig, TrainConfig, SamplerFields):
    reward: str = Field("rules:1", description="weighted reward mix, e.g. 'rm:RUN_DIR,rules:0.5,length:0.2' "
                        "or 'gen-rm:RUN_DIR'")
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
    heldout: str = Field("auto", description="evaluator sharing no signal with the reward: auto | rules | "
                         "similarity | rm:RUN_DIR | none (evaluation.hacking refuses one the reward touches)")
    heldout_prompts: int = Field(
        8, ge=0, description="last K training-side prompts (demonstrations, train_prompts) kept out of the "
        "gradient for the hacking monitor; eval prompts are never used"
    )
    eval_every: int = Field(5, ge=1, description="steps between held-out evaluations")
    window: int = Field(5, ge=3, description="fewest evaluations in a trend segment that can flag reward hacking")
    pairwise_judge: Literal["llm", "rules"] = Field("llm", description="judge of the pairwise reward term")

    @field_validator("reward")
    @classmethod
    def _valid_reward(cls, value: str) -> str:
        parse_reward_spec(value)
        return value


class _ReferenceBackend(GenerationBackend):
    """The frozen reference policy (an engine snapshot) as a backend, for the pairwise reward and its judge."""

    name = "reference"

    def __init__(self, client: SamplingClient, renderer: ChatRenderer):
        self.client = client
        self.renderer = renderer

    def generate(self, conversations: Sequence[Conversation], sampling: SamplingConfig,
                 progress: bool = False) -> list[list[str]]:
        prompts = [self.renderer.prompt_ids(c) for c in conversations]
        samples = self.client.sample(prompts, sampling, progress).result()
        return [[self.renderer.decode(s, sampling.stop)[0] for s in group] for group in samples]

    def logprobs(self, conversations: Sequence[Conversation], completions: Sequence[str]) -> list[float]:
        pairs = [self.renderer.prompt_completion_ids(c, y) for c, y in zip(conversations, completions, strict=True)]
        return sequence_sums(self.client, pairs).tolist()


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
        self._gen_rms: dict[str, Any] = {}
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

    def _gen_rm(self, path: str) -> Any:
        if path not in self._gen_rms:
            from personalign.judges.generative import GenerativeJudge

            self._gen_rms[path] = GenerativeJudge.load(path)
        return self._gen_rms[path]

    def _reference_samples(self, prompts: Sequence[str]) -> list[str]:
        """One reference-policy sample per prompt, drawn once and reused (the opponent of pairwise rewards)."""
        missing = sorted({p for p in prompts if p not in self._base_samples})
        if missing:
            sampling = SamplingConfig(temperature=0.7, max_new_tokens=self.max_new_tokens, seed=self.seed)
            outs = self.reference.generate([self.conversation(p) for p in missing], sampling)
            self._base_samples.update({p: o[0] for p, o in zip(missing, outs, strict=True)})
        return [self._base_samples[p] for p in prompts]

    def _pairwise(self, prompts: Sequence[str], texts: Sequence[str]) -> list[float]:
        """Win rate (1 win, ½ tie, 0 loss) of each text against one reference sample for its prompt.

        An unparseable verdict scores ½ (no information) and is reported as `pairwise_unparseable`.
        """
        opponents = self._reference_samples(prompts)
        if self.pairwise_judge == "llm":
            from personalign.judges.llm import LLMJudge

            judge: Any = LLMJudge(self.reference)
        else:
            from personalign.judges.base import RulesJudge

            judge = RulesJudge()
        verdicts = judge.compare_many(list(prompts), list(texts), opponents, self.profile)
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
        if term.kind == "gen-rm":
            assert term.path is not None
            opponents = self._reference_samples(prompts)
            return [pref.p for pref in self._gen_rm(term.path).preferences(list(prompts), list(texts), opponents,
                                                                          self.profile)]
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
        """(training prompts, monitor prompts), both from the training side (demonstrations, `train_prompts`):
        the last K are kept out of the gradient for the hacking monitor. Eval prompts are never used."""
        from personalign.splits import training_prompts

        pool = training_prompts(profile)
        k = min(self.config.heldout_prompts, max(0, len(pool) - 1))
        train, held = pool[: len(pool) - k], pool[len(pool) - k :]
        if not train:
            raise ProfileError(f"profile {profile.name!r}: no prompts to train on; add demonstrations or train_prompts")
        return train, held

    def _heldout_evaluator(self, terms: Sequence[RewardTerm], build: bool = True) -> tuple[str, Evaluator] | None:
        """An evaluator sharing no signal with the reward (`evaluation.hacking.select_heldout_evaluator`);
        the choice is always checked, the evaluator only built when there are monitor prompts (`build`)."""
        from personalign.evaluation.hacking import build_heldout_evaluator, select_heldout_evaluator

        name = select_heldout_evaluator(terms, self.config.heldout, self.config.pairwise_judge)
        assert self.profile is not None
        return (name, build_heldout_evaluator(name, self.profile)) if name and build else None

    @staticmethod
    def _reward_training_data(terms: Sequence[RewardTerm]) -> Any:
        """A reward model's own training data counts as this run's: optimizing it optimizes toward them."""
        from personalign.splits import TrainingData, read_training_data

        data = TrainingData()
        for term in terms:
            if term.kind in RUN_DIR_KINDS and term.path:
                data = data.union(read_training_data(term.path))
        return data

    def fit(self, profile: Profile, run_dir: RunDir | None = None, progress: bool = True) -> None:
        super().fit(profile, run_dir)
        cfg = self.config
        seed_everything(cfg.seed)
        terms = parse_reward_spec(cfg.reward)
        train_prompts, held_prompts = self.split_prompts(profile)
        self.record_training([*train_prompts, *held_prompts], also=self._reward_training_data(terms))
        evaluator = self._heldout_evaluator(terms, build=bool(held_prompts))  # refuses before any model change
        run = run_dir or RunDir(tempfile.mkdtemp(prefix="rlaif-"))
        self.engine = engine = create_engine(self, cfg.lora)
        self.renderer = ChatRenderer(self.backend.tokenizer)  # type: ignore[attr-defined]
        self.ref = engine.snapshot()  # π_ref = the starting weights, frozen before any step (and any resume)
        reward = RewardMix(terms, profile, _ReferenceBackend(self.ref, self.renderer), self.conversation,
                           cfg.pairwise_judge, cfg.seed, cfg.max_new_tokens)
        self.session = session = TrainingSession(engine, cfg, run.path if run_dir is not None else None)
        if cfg.resume:
            session.restore()
        # The policy's samples (training groups and held-out answers): the engine's own, or vLLM's (synced)
        self.policy = policy_sampler(cfg, engine, self.backend, cfg.lora.r, cfg.seed)
        sampling = SamplingConfig(n=cfg.group_size, temperature=cfg.temperature, top_p=cfg.top_p,
                                  max_new_tokens=cfg.max_new_tokens)
        with Progress(transient=True, disable=not progress) as bar, contextlib.closing(self.policy):
            task = bar.add_task("rlaif", total=cfg.max_steps, completed=session.step)
            while session.step < cfg.max_steps:
                record = self._step(session, train_prompts, reward, sampling)
                step = session.step
                if evaluator is not None and held_prompts and (step % cfg.eval_every == 0 or step == cfg.max_steps
                                                               or step == 1):
                    record.update(self._evaluate(held_prompts, reward, evaluator))
                run.log_metrics(record, step=step)
                if step % cfg.checkpoint_every == 0 or step == cfg.max_steps:
                    session.save()
                bar.update(task, completed=step, description=f"rlaif reward {record['reward']:.3f}")
        self.summary = self._summarize(run, evaluator[0] if evaluator else None, progress)
        if run_dir is not None:
            save_trained(self, run_dir, engine)

    def _sample(self, prompts: Sequence[str], sampling: SamplingConfig) -> list[list[tuple[str, bool]]]:
        """(text, ended on its own) for `sampling.n` samples per prompt, from the engine's current weights."""
        ids = [self.renderer.prompt_ids(self.conversation(p)) for p in prompts]
        self.policy.sync(self.session.step)  # vLLM: export the adapter once per optimizer step
        groups = self.policy.sample(ids, sampling).result()
        return [[self.renderer.decode(s, sampling.stop) for s in group] for group in groups]

    def _step(self, session: TrainingSession, train_prompts: list[str], reward: RewardMix,
              sampling: SamplingConfig) -> dict[str, Any]:
        from personalign.evaluation.hacking import text_diagnostics
        from personalign.methods.training import batch_indices

        cfg = self.config
        assert self.profile is not None
        prompts = [train_prompts[i] for i in batch_indices(len(train_prompts), cfg.batch_size, session.step, cfg.seed)]
        t0 = time.perf_counter()
        groups = self._sample(prompts, sampling.model_copy(update={"seed": cfg.seed * 7919 + session.step}))
        flat_prompts = [p for p, g in zip(prompts, groups, strict=True) for _ in g]
        texts = [t for g in groups for t, _ in g]
        ended = [e for g in groups for _, e in g]
        t1 = time.perf_counter()
        totals, parts = reward(flat_prompts, texts)
        t2 = time.perf_counter()
        rewards = torch.tensor(totals, dtype=torch.float32).view(len(prompts), cfg.group_size)
        advantages = group_advantages(rewards).view(-1).tolist()
        pairs = [self.renderer.prompt_completion_ids(self.conversation(p), t, e)
                 for p, t, e in zip(flat_prompts, texts, ended, strict=True)]
        pairs = [(p, c[: cfg.max_new_tokens + 1]) for p, c in pairs]
        ref_logp = self.ref.compute_logprobs(datums(pairs)).result().per_datum()
        data = [Datum(p, c, advantage=a, ref_logprobs=r)
                for (p, c), a, r in zip(pairs, advantages, ref_logp, strict=True)]
        out = session.update(data, PolicyLoss(kl_beta=cfg.beta))
        t3 = time.perf_counter()
        record: dict[str, Any] = {
            "phase": "rlaif", "loss": out.loss, "reward": _mean(totals), "kl": out.metrics["kl"],
            **{k: _mean(v) for k, v in parts.items()},
            "truncated_rate": sum(not e for e in ended) / len(ended),
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
        texts = [g[0][0] for g in self._sample(prompts, sampling)]
        totals, _ = reward(prompts, texts)
        return {"eval_reward": _mean(totals), "heldout": evaluator[1](prompts, texts),
                "heldout_evaluator": evaluator[0]}

    def _summarize(self, run: RunDir, evaluator: str | None, progress: bool = False) -> dict[str, Any]:
        from personalign.evaluation.hacking import detect_divergence, plot_diagnostics

        records = _last_per_step([r for r in run.metrics if r.get("phase") == "rlaif"])
        divergence = detect_divergence(records, window=self.config.window, reward_key="eval_reward")
        if evaluator is None:
            verdict = ("hacking not checked: no monitor prompts (add train_prompts)" if self.config.heldout != "none"
                       else "hacking not checked (heldout none)")
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
