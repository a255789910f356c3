"""`gen-rm`: a generative pairwise judge, an LM fine-tuned to answer A or B given a rubric, a prompt and two answers.

The assignment's reward model (tinker-cookbook's preference model, `preference/types.py` and
`rl/preference_envs.py`): the comparison is rendered as one chat turn and the judge's reply is a single
label token. Differences from the cookbook, and why:
- training data are rubric-labeled pairs from the preference pipeline (or any labeled set), each pair in
  BOTH orders with the label swapped (the cookbook's `swap=True` augmentation), so "first slot wins" cannot
  lower the loss and position bias is trained out; only the label token is scored (the cookbook truncates
  the target after the first weighted token too);
- the rubric is part of the prompt (pipeline pairs: the profile's rubric, `judges.llm.profile_rubric`), so
  the same judge can be asked about another rubric;
- scoring reads probabilities instead of sampling one token (the cookbook's `TODO use probabilities`):
  P(first shown wins) = p(A) / (p(A) + p(B)) from the next-token log-probs, and P(a ≻ b) is the mean of
  that over the two orders, so a judge that always says "A" scores exactly ½ on every pair (no
  information) and its per-order verdicts disagree (position bias 100 % in `judge validate`).

Everything runs through the engine protocol (`engines.base`): training is `CrossEntropy` on the label token
(`forward_backward` + `optim_step`), scoring is `compute_logprobs`, so the judge trains and scores on any
engine. Held-out pairs are split by prompt (`splits.group_split`) and never trained on; they are saved as
`heldout_pairs.jsonl` beside `training_data.json`, so `judge validate --judge gen-rm --rm RUN_DIR --data
RUN_DIR/heldout_pairs.jsonl` reproduces the held-out agreement the run reports.
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from personalign.engines.base import (
    CrossEntropy,
    CustomLoss,
    Datum,
    ForwardBackwardOutput,
    LoraSettings,
    Loss,
    SamplingClient,
    TokenLogprobs,
    TrainingEngine,
)
from personalign.engines.render import ChatRenderer
from personalign.errors import PersonalignError
from personalign.judges.base import Judge, JudgeScore, Label, Verdict, swap_label
from personalign.judges.labeled_sets import LabeledPair
from personalign.profiles.schema import Profile
from personalign.progress import Progress
from personalign.runs import RunDir
from personalign.splits import TrainingData, write_training_data

if TYPE_CHECKING:
    from personalign.judges.reward_model import RewardModelConfig
    from personalign.methods.training import TrainingSession

GEN_RM_FILE = "gen_rm.json"
HELDOUT_FILE = "heldout_pairs.jsonl"
LABELS = ("A", "B")
TIE_TOLERANCE = 1e-6  # |P(a ≻ b) − ½| at or below this is a tie (an order-symmetric judge)

TEMPLATE = """###Task Description:
An instruction, two responses to it (A and B) and a score rubric are given. Decide which response \
better satisfies the rubric. Answer with the single letter A or B.

###Score Rubric:
{rubric}

###Instruction:
{instruction}

###Response A:
{response_a}

###Response B:
{response_b}

###Better response (A or B):"""


# ---- the scoring arithmetic (pure, tested by hand) ----------------------------------------------------
def first_wins(logp_a: float, logp_b: float) -> float:
    """P(the response shown first wins) = p(A) / (p(A) + p(B)) = σ(log p(A) − log p(B))."""
    return 1.0 / (1.0 + math.exp(logp_b - logp_a))


def both_orders(p_forward: float, p_backward: float) -> float:
    """P(a ≻ b): the mean of P(a wins) shown (a, b), i.e. `p_forward`, and shown (b, a), i.e. 1 − `p_backward`."""
    return 0.5 * (p_forward + (1.0 - p_backward))


def order_label(p_first: float) -> Label:
    return "tie" if abs(p_first - 0.5) <= TIE_TOLERANCE else ("A" if p_first > 0.5 else "B")


def p_chosen(prefs: Sequence[Preference], gold: Sequence[str]) -> float:
    """Mean probability the judge gives the labeled winner (ties in `gold` skipped): a soft agreement."""
    values = [pref.p if g == "A" else 1.0 - pref.p for pref, g in zip(prefs, gold, strict=True) if g in LABELS]
    return sum(values) / len(values) if values else float("nan")


@dataclass
class Preference:
    """P(a ≻ b) over both orders, and P(the first shown wins) in each order."""

    p: float
    p_forward: float
    p_backward: float

    def verdict(self) -> Verdict:
        # per-order labels in the caller's a/b names: the backward order showed b first
        orders: list[Label | None] = [order_label(self.p_forward), swap_label(order_label(self.p_backward))]
        feedback = f"P(a ≻ b) = {self.p:.3f} (shown a first: {self.p_forward:.3f}; b first: {1 - self.p_backward:.3f})"
        return Verdict(order_label(self.p), orders, feedback)


# ---- rendering: the one place a comparison becomes token ids --------------------------------------------
class ComparisonRenderer:
    """Comparison → prompt ids (the chat template's user turn + assistant header); label → its one token id."""

    def __init__(self, tokenizer: Any, max_chars: int = 1500, max_length: int = 2048):
        self.chat = ChatRenderer(tokenizer)
        self.max_chars = max_chars
        self.max_length = max_length
        self.label_ids = tuple(self._label_id(label) for label in LABELS)
        if self.label_ids[0] == self.label_ids[1]:
            raise PersonalignError("the judge tokenizer maps A and B to the same token; use another backbone")
        self.truncated = 0

    def _label_id(self, label: str) -> int:
        _, ids = self.chat.prompt_completion_ids([{"role": "user", "content": "x"}], label, ended=False)
        if len(ids) != 1:
            raise PersonalignError(f"the judge tokenizer splits {label!r} into {len(ids)} tokens; gen-rm needs a "
                                   "tokenizer where A and B are single tokens (e.g. --backbone default)")
        return ids[0]

    def _clip(self, text: str) -> str:
        return text if len(text) <= self.max_chars else text[: self.max_chars] + " …"

    def prompt_ids(self, rubric: str, instruction: str, first: str, second: str) -> list[int]:
        text = TEMPLATE.format(rubric=rubric, instruction=self._clip(instruction), response_a=self._clip(first),
                               response_b=self._clip(second))
        ids = self.chat.prompt_ids([{"role": "user", "content": text}])
        if len(ids) > self.max_length - 1:
            # Keep the end (the responses and the question); counted so a summary can say how often it happened.
            self.truncated += 1
            ids = ids[-(self.max_length - 1):]
        return ids

    def training_datums(self, pair: LabeledPair, rubric: str) -> list[Datum]:
        """The pair in both orders, each with its label token as the only completion token."""
        if pair.label not in LABELS:
            raise PersonalignError(f"gen-rm trains on decided pairs; got label {pair.label!r}")
        swapped = swap_label(pair.label)
        assert swapped is not None
        return [
            Datum(self.prompt_ids(rubric, pair.prompt, pair.a, pair.b), [self.label_ids[LABELS.index(pair.label)]]),
            Datum(self.prompt_ids(rubric, pair.prompt, pair.b, pair.a), [self.label_ids[LABELS.index(swapped)]]),
        ]


# ---- the judge --------------------------------------------------------------------------------------
class GenerativeJudge(Judge):
    """A trained (or any) chat LM as a pairwise judge, scored from its A/B next-token log-probs."""

    name = "gen-rm"
    order_sensitive = True

    def __init__(self, client: SamplingClient, renderer: ComparisonRenderer, rubric: str | None = None,
                 batch_size: int = 8):
        self.client = client
        self.renderer = renderer
        self.rubric = rubric  # the rubric it was trained with: used when neither the item nor a profile has one
        self.batch_size = batch_size

    def rubric_for(self, profile: Profile | None, override: str | None) -> str:
        from personalign.judges.llm import GENERIC_RUBRIC, profile_rubric

        if override:
            return override
        if profile is not None:
            return profile_rubric(profile)
        return self.rubric or GENERIC_RUBRIC

    def preferences(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str], profile: Profile | None = None,
                    rubrics: Sequence[str | None] | None = None) -> list[Preference]:
        """P(a ≻ b) per pair. Four sequences per pair (two orders × the A and B tokens): the protocol scores
        given completions only, so each label token is its own one-token completion."""
        rubrics = rubrics or [None] * len(prompts)
        label_a, label_b = self.renderer.label_ids
        data: list[Datum] = []
        for p, x, y, r in zip(prompts, a, b, rubrics, strict=True):
            rubric = self.rubric_for(profile, r)
            for first, second in ((x, y), (y, x)):
                ids = self.renderer.prompt_ids(rubric, p, first, second)
                data += [Datum(ids, [label_a]), Datum(list(ids), [label_b])]
        values: list[float] = []
        for start in range(0, len(data), 4 * self.batch_size):
            values += self.client.compute_logprobs(data[start : start + 4 * self.batch_size]).result().sums().tolist()
        out = []
        for i in range(len(prompts)):
            fa, fb, ba, bb = values[4 * i : 4 * i + 4]
            forward, backward = first_wins(fa, fb), first_wins(ba, bb)
            out.append(Preference(both_orders(forward, backward), forward, backward))
        return out

    def compare_many(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str], profile: Profile | None = None,
                     rubrics: Sequence[str | None] | None = None) -> list[Verdict]:
        return [pref.verdict() for pref in self.preferences(prompts, a, b, profile, rubrics)]

    def score_many(self, prompts: Sequence[str], outputs: Sequence[str], profile: Profile | None = None,
                   rubrics: Sequence[str | None] | None = None) -> list[JudgeScore]:
        raise PersonalignError("gen-rm is a pairwise judge (A or B); use it to compare two outputs, or as the "
                               "RLAIF reward gen-rm:RUN_DIR (win probability against a reference sample)")

    # ---- loading a trained judge ------------------------------------------------------------------
    @classmethod
    def load(cls, run_dir: str | Path, device: str = "auto") -> GenerativeJudge:
        """The judge a finished `reward train --kind gen-rm` wrote, on the engine it was trained on."""
        from personalign.backends.hf import HFBackend
        from personalign.config import ModelConfig
        from personalign.engines import build_engine

        run_dir = Path(run_dir)
        path = run_dir / GEN_RM_FILE
        if not path.is_file():
            raise PersonalignError(f"{run_dir}: no {GEN_RM_FILE}; pass the run dir of a finished "
                                   "`personalign reward train --kind gen-rm`")
        manifest = json.loads(path.read_text(encoding="utf-8"))
        weights = manifest["weights"]
        adapter = None
        if "adapter" in weights:
            adapter = weights["adapter"] if "://" in weights["adapter"] else str(run_dir / weights["adapter"])
            base = manifest["backbone"]
        else:
            base = weights["model"]
        client: SamplingClient
        if manifest["engine"] == "tinker":
            # The service samples (and scores) saved weights by their tinker:// path; settings from the env.
            from personalign.backends.tinker import TinkerBackend

            tinker = TinkerBackend(ModelConfig(model=base, backend="tinker", adapter=adapter))
            client, tokenizer = tinker.sampler, tinker.tokenizer
        else:
            # fp32 as in training: a judge's verdict often rests on log-prob gaps that bf16 rounds away.
            backend = HFBackend(ModelConfig(model=base, device=device, dtype="fp32"))
            # A trainable engine is also a sampling client; the local engine loads the saved adapter (or model).
            client = build_engine("local", backend, LoraSettings(enabled=adapter is not None), init_adapter=adapter)
            tokenizer = backend.tokenizer
        renderer = ComparisonRenderer(tokenizer, manifest["max_chars"], manifest["max_length"])
        return cls(client, renderer, manifest.get("rubric"))


# ---- training ---------------------------------------------------------------------------------------
def _label_nll(data: Sequence[Datum], logprobs: TokenLogprobs,
               batch_sequences: int | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean −log p(label token): `CrossEntropy`'s value and gradient on one-token completions. With
    `batch_sequences` (a micro-batch of a larger batch) the sum is divided by the whole batch's size, so the
    micro-batches' losses and gradients add up to the batch mean."""
    nll = -logprobs.sums()
    total = batch_sequences or len(nll)
    return nll.sum() / total, {"label_accuracy": float((nll < math.log(2)).float().sum()) / total}


def label_loss(engine: TrainingEngine) -> Loss:
    """The label-token loss for `engine`. In-process engines get it as a log-prob `CustomLoss`: their
    `CrossEntropy` projects every prompt position onto the vocabulary (≈ 500 positions × 49k logits per
    comparison here) while log-prob losses project only the scored position. A remote engine gets the
    built-in `CrossEntropy` (Tinker's custom losses cost a second forward pass)."""
    from personalign.engines.local import LocalEngine

    return CustomLoss(_label_nll, name="label_nll") if isinstance(engine, LocalEngine) else CrossEntropy()


def train_step(session: TrainingSession, batch: Sequence[Datum], loss: Loss,
               micro_batch_size: int) -> ForwardBackwardOutput:
    """One optimizer step on `batch`. The in-process label loss runs in micro-batches of `micro_batch_size`
    sequences whose gradients accumulate (a batch of comparisons in one pass does not fit in memory); a remote
    engine's built-in loss takes the batch in one call (the service batches it)."""
    if not isinstance(loss, CustomLoss) or len(batch) <= micro_batch_size:
        return session.update(batch, loss)
    share = CustomLoss(functools.partial(_label_nll, batch_sequences=len(batch)), name=loss.name)
    return session.update_accumulated([(batch[i : i + micro_batch_size], share)
                                       for i in range(0, len(batch), micro_batch_size)])


def check_config(config: RewardModelConfig) -> None:
    """What is wrong with a gen-rm config, before any model loads."""
    from personalign.engines import ENGINES

    if config.backbone in ("minilm", "all-MiniLM-L6-v2"):
        raise PersonalignError(f"--kind gen-rm needs a chat LM backbone that can answer A or B, not "
                               f"{config.backbone!r}; use --backbone default or a causal-LM folder")
    if config.engine not in ENGINES:
        raise PersonalignError(f"rm.engine {config.engine!r}: unknown; use one of {', '.join(ENGINES)}")
    if config.engine == "tinker" and (config.backbone == "default" or not config.lora):
        raise PersonalignError("rm.engine tinker: the service trains LoRA adapters of the models it lists; pass "
                               "--backbone as the service names it (e.g. Qwen/Qwen3-8B) and --lora")


def _engine_for(config: RewardModelConfig) -> tuple[TrainingEngine, Any]:
    from personalign.backends.hf import HFBackend
    from personalign.config import ModelConfig
    from personalign.engines import build_engine

    check_config(config)
    lora = LoraSettings(enabled=config.lora, r=config.lora_r, alpha=config.lora_alpha, dropout=0.0)
    if config.engine == "tinker":  # the service's model; connection settings from TINKER_BASE_URL / _API_KEY
        from personalign.backends.tinker import TinkerBackend

        backend: Any = TinkerBackend(ModelConfig(model=config.backbone, backend="tinker"))
    else:
        backend = HFBackend(ModelConfig(model=config.backbone, device=config.device, dtype="fp32"))
    return build_engine(config.engine, backend, lora), backend


def train_generative_judge(
    pairs: Sequence[LabeledPair], config: RewardModelConfig, run_dir: RunDir, rubric: str | None = None,
    resume: bool = False, progress: bool = True, engine: TrainingEngine | None = None, tokenizer: Any = None,
    heldout: Sequence[LabeledPair] | None = None,
) -> tuple[GenerativeJudge, dict[str, Any]]:
    """SFT a judge on `pairs` (both orders, label token only) into `run_dir`; returns it and a summary.

    `rubric`: the rubric of pairs that carry none (pipeline pairs: the profile's). `engine` + `tokenizer`
    inject an already-built model (tests use a tiny one); `heldout` overrides the seeded split by prompt.
    The summary holds `judge validate`'s agreement metrics on the held-out pairs before and after training.
    """
    from personalign.judges.reward_model import split_pairs
    from personalign.judges.validate import agreement_metrics, bootstrap_ci
    from personalign.methods.training import TrainConfig, TrainingSession, batch_indices
    from personalign.runs import seed_everything

    seed_everything(config.seed)
    if heldout is None:
        train, heldout = split_pairs(pairs, config.heldout_fraction, config.seed)
    else:
        train = [p for p in pairs if p.label != "tie"]
    if len(train) < 2:
        raise PersonalignError(f"only {len(train)} decided training pairs; a generative judge needs at least 2")
    if engine is None:
        engine, backend = _engine_for(config)
        tokenizer = backend.tokenizer
    renderer = ComparisonRenderer(tokenizer, config.max_chars, config.max_length)
    judge = GenerativeJudge(engine, renderer, rubric, batch_size=config.batch_size)
    loss = label_loss(engine)
    examples = [renderer.training_datums(p, judge.rubric_for(None, p.rubric)) for p in train]
    per_epoch = math.ceil(len(train) / config.batch_size)
    steps = config.max_steps if config.max_steps > 0 else math.ceil(config.epochs * per_epoch)
    train_config = TrainConfig(lr=config.learning_rate, batch_size=config.batch_size, max_steps=steps,
                               checkpoint_every=config.save_every, seed=config.seed, grad_clip=1.0,
                               lr_schedule="constant")
    session = TrainingSession(engine, train_config, run_dir.path)
    resumed_from, before = None, None
    extra = session.restore() if resume else None
    if extra is not None:
        resumed_from, before = f"step-{session.step:06d}", extra.get("heldout_before")

    def agreement(with_ci: bool = False) -> dict[str, Any]:
        """`judge validate`'s metrics on the held-out pairs, plus the mean P(chosen ≻ rejected)."""
        if not heldout:
            return {"accuracy": float("nan"), "position_bias_rate": float("nan"), "p_chosen": float("nan")}
        prefs = judge.preferences([p.prompt for p in heldout], [p.a for p in heldout], [p.b for p in heldout],
                                  rubrics=[judge.rubric_for(None, p.rubric) for p in heldout])
        gold, verdicts = [p.label for p in heldout], [pref.verdict() for pref in prefs]
        result: dict[str, Any] = {"n": len(heldout), **agreement_metrics(gold, verdicts),
                                  "p_chosen": p_chosen(prefs, gold)}
        if with_ci:
            result["ci95"] = bootstrap_ci(gold, verdicts, n_boot=1000, seed=config.seed)
        return result

    if before is None:
        before = {k: v for k, v in agreement().items() if k in ("accuracy", "position_bias_rate", "p_chosen")}
    start = time.perf_counter()
    with Progress(transient=True, disable=not progress) as bar:
        task = bar.add_task("gen-rm", total=steps, completed=session.step)
        while session.step < steps:
            batch = [d for i in batch_indices(len(examples), config.batch_size, session.step, config.seed)
                     for d in examples[i]]
            out = train_step(session, batch, loss, config.micro_batch_size)
            record: dict[str, Any] = {"loss": out.loss, **out.metrics}
            if heldout and (session.step % config.eval_every == 0 or session.step == steps):
                result = agreement()
                record.update(heldout_accuracy=result["accuracy"], heldout_position_bias=result["position_bias_rate"],
                              heldout_p_chosen=result["p_chosen"])
            run_dir.log_metrics(record, step=session.step)
            if session.step % config.save_every == 0 or session.step == steps:
                session.save({"heldout_before": before})
            bar.update(task, completed=session.step, description=f"gen-rm loss {out.loss:.3f}")
    after = agreement(with_ci=True)
    weights = engine.save_weights(run_dir.path)
    summary = {
        "kind": "gen-rm", "backbone": config.backbone, "engine": config.engine, "lora": config.lora,
        "train_pairs": len(train), "train_sequences": 2 * len(train), "heldout_pairs": len(heldout),
        "heldout_accuracy_before": before["accuracy"], "heldout_accuracy": after["accuracy"],
        "heldout_position_bias_before": before["position_bias_rate"],
        "heldout_position_bias": after["position_bias_rate"], "heldout_p_chosen_before": before["p_chosen"],
        "heldout_p_chosen": after["p_chosen"], "heldout": after,
        "steps": session.step, "train_seconds": time.perf_counter() - start, "resumed_from": resumed_from,
        "truncated_prompts": renderer.truncated,
    }
    if engine.is_main:
        run_dir.write_json(GEN_RM_FILE, {**summary, "weights": weights, "rubric": rubric,
                                         "max_chars": config.max_chars, "max_length": config.max_length,
                                         "labels": dict(zip(LABELS, renderer.label_ids, strict=True))})
        from personalign.io import atomic_write_jsonl

        atomic_write_jsonl(run_dir.path / HELDOUT_FILE, [
            {"prompt": p.prompt, "a": p.a, "b": p.b, "label": p.label, "rubric": p.rubric, "source": p.source}
            for p in heldout])
        write_training_data(run_dir.path, TrainingData.of([p.prompt for p in train],
                                                          [t for p in train for t in (p.a, p.b)]))
        run_dir.log_metrics({"final_heldout_accuracy": after["accuracy"]}, step=session.step)
    return judge, summary
