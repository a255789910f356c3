"""Typed configs of `personalign bench` and `personalign data characterize` (every CLI flag is a field)."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import Field, field_validator

from personalign.config import Config
from personalign.errors import PersonalignError
from personalign.prefbench.methods.base import TrainConfig
from personalign.prefbench.methods.conditional import ConditionalOptions
from personalign.prefbench.methods.gpo import GPOOptions
from personalign.prefbench.methods.gpo_bt import GPOBTOptions
from personalign.prefbench.methods.individual import IndividualOptions
from personalign.prefbench.methods.lora import LoRAOptions
from personalign.prefbench.methods.personalized import PersonalizedOptions
from personalign.prefbench.methods.rag import RAGOptions
from personalign.prefbench.methods.rag_vote import RAGVoteOptions
from personalign.prefbench.methods.soups import RMSoupOptions, SoupsOptions
from personalign.prefbench.methods.vanilla import VanillaOptions
from personalign.prefbench.methods.vpl import VPLOptions

# The published methods and, beside each, the variant kept under its own name (rm-soup, gpo-bt, rag-vote).
ALL_METHODS = ("vanilla", "individual", "conditional", "personalized", "soups", "rm-soup", "vpl", "gpo", "gpo-bt",
               "rag", "rag-vote")
# Runnable by name but not part of 'all': fine-tuning the backbone is minutes per fit on a CPU.
EXTRA_METHODS = ("lora",)


class SyntheticOptions(Config):
    """The synthetic users (see prefbench.data.synthetic)."""

    n_users: int = Field(8, ge=2)
    n_prompts: int = Field(240, ge=1)
    responses_per_prompt: int = Field(4, ge=2)
    minority_frac: float = Field(0.25, ge=0.0, lt=1.0)
    label_noise: float = Field(0.05, ge=0.0, lt=0.5)
    repeat_frac: float = Field(0.1, ge=0.0, le=1.0, description="share of comparisons each user labels twice")
    test_frac: float = Field(0.2, gt=0.0, lt=1.0)
    seed: int = 0


class MethodOptions(Config):
    """Per-method options, e.g. `options.personalized.alpha: 0.7` in YAML or `--set` on the CLI."""

    vanilla: VanillaOptions = Field(default_factory=VanillaOptions)
    individual: IndividualOptions = Field(default_factory=IndividualOptions)
    conditional: ConditionalOptions = Field(default_factory=ConditionalOptions)
    personalized: PersonalizedOptions = Field(default_factory=PersonalizedOptions)
    soups: SoupsOptions = Field(default_factory=SoupsOptions)
    rm_soup: RMSoupOptions = Field(default_factory=RMSoupOptions)
    vpl: VPLOptions = Field(default_factory=VPLOptions)
    gpo: GPOOptions = Field(default_factory=GPOOptions)
    gpo_bt: GPOBTOptions = Field(default_factory=GPOBTOptions)
    rag: RAGOptions = Field(default_factory=RAGOptions)
    rag_vote: RAGVoteOptions = Field(default_factory=RAGVoteOptions)
    lora: LoRAOptions = Field(default_factory=LoRAOptions)


class DataOptions(Config):
    """Where data comes from and how much of it is used (shared by bench and characterize)."""

    data_dir: str | None = Field(None, description="root of the shared data sets (default: $PERSONALIGN_DATA, "
                                                   "then ../shared/datasets)")
    data_path: str | None = Field(None, description="local copy of a hub set (.jsonl/.parquet or a folder of "
                                                    "split files, in the hub's schema)")
    max_train_per_user: int | None = Field(2000, ge=1, description="cap on train pairs per user (seeded sample)")
    max_test_per_user: int | None = Field(500, ge=1, description="cap on test pairs per user (seeded sample)")
    synthetic: SyntheticOptions = Field(default_factory=SyntheticOptions)


class BenchConfig(DataOptions):
    """`personalign bench`: methods × data sets, judged on accuracy, fairness, tax and adaptation."""

    dataset: list[str] = Field(default_factory=lambda: ["dsp"], description="data set names (or .jsonl files)")
    methods: list[str] = Field(default_factory=lambda: ["all"], description="method names, or 'all'")
    backbone: str = Field("minilm", description="sentence-transformers embedder: 'minilm' (packaged) or a model")
    embedder_dtype: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto = bf16 where the CPU/GPU has native bf16 matmuls (~1.6x faster), else fp32"
    )
    quick: bool = Field(False, description="smaller everything: a smoke run in about a minute per data set")
    out: str | None = Field(None, description="output folder (default: runs/prefbench/<dataset>-<time>)")
    seed: int = 0
    max_prompt_chars: int = Field(400, ge=0, description="keep the end of long prompts so the response fits "
                                                         "MiniLM's 256-token window")
    tax: bool = Field(True, description="score the tax sets (chat, chat_hard, safety, reasoning)")
    tax_max_per_source: int | None = Field(200, ge=1, description="cap on pairs per tax source and category")
    tax_bootstrap: int = Field(1000, ge=10, description="bootstrap resamples of the tax CIs")
    general: bool = Field(True, description="give every method HH helpful/harmless pairs as one more pseudo-user "
                                            "(the shared component's general signal; disjoint from the tax sets)")
    general_max_pairs: int = Field(2000, ge=2, description="general pairs (half helpful, half harmless)")
    slow_eval_pairs: int = Field(6, ge=1, description="test pairs per user for slow methods (rag: two LLM "
                                                       "passes each); they skip the tax and adaptation")
    adaptation: bool = Field(True, description="few-shot adaptation to held-out users")
    ks: list[int] = Field(default_factory=lambda: [10, 30, 100, 300], description="labeled pairs per new user")
    adapt_folds: int = Field(2, ge=2, description="user folds: each fold's users are held out once (each fold "
                                                   "retrains every method)")
    jobs: int = Field(2, ge=1, description="methods trained at once, in worker processes (1 = in-process)")
    torch_threads: int = Field(1, ge=1, description="torch threads while training heads (small ops run "
                                                     "fastest single-threaded)")
    plots: bool = True
    resume: bool = Field(True, description="reuse finished methods' results found in the out folder")
    train: TrainConfig = Field(default_factory=TrainConfig)
    options: MethodOptions = Field(default_factory=MethodOptions)

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, value: list[str]) -> list[str]:
        unknown = [m for m in value if m != "all" and m not in (*ALL_METHODS, *EXTRA_METHODS)]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join((*ALL_METHODS, *EXTRA_METHODS))} "
                             "or 'all'")
        return value

    @field_validator("ks")
    @classmethod
    def _positive_ks(cls, value: list[int]) -> list[int]:
        if any(k < 1 for k in value):
            raise ValueError("every k must be ≥ 1")
        return sorted(set(value))

    def method_list(self) -> list[str]:
        names = [m for name in self.methods for m in (ALL_METHODS if name == "all" else (name,))]
        return list(dict.fromkeys(names))

    def effective(self) -> BenchConfig:
        """The config actually run: `quick` shrinks training, data, folds and tax sets."""
        if not self.quick:
            return self
        o = self.options
        return self.model_copy(update={
            "train": self.train.model_copy(update={"epochs": min(self.train.epochs, 5), "min_steps": 80}),
            "options": o.model_copy(update={
                "vpl": o.vpl.model_copy(update={"steps": min(o.vpl.steps, 250)}),
                "gpo": o.gpo.model_copy(update={"steps": min(o.gpo.steps, 150)}),
                "gpo_bt": o.gpo_bt.model_copy(update={"steps": min(o.gpo_bt.steps, 150)}),
                "soups": o.soups.model_copy(update={"init_epochs": 2}),
                "rm_soup": o.rm_soup.model_copy(update={"init_epochs": 2, "weight_steps": 60}),
            }),
            "general_max_pairs": min(self.general_max_pairs, 600),
            "ks": [k for k in self.ks if k in (10, 100)] or self.ks[:2],
            "adapt_folds": 2,
            "tax_max_per_source": min(self.tax_max_per_source or 50, 50),
            "max_train_per_user": min(self.max_train_per_user or 600, 600),
            "max_test_per_user": min(self.max_test_per_user or 200, 200),
            "synthetic": self.synthetic.model_copy(update={"n_prompts": min(self.synthetic.n_prompts, 120)}),
        })

    def fingerprint(self, dataset: str, method: str) -> str:
        """Hash of everything that changes a method's results (not where they go or how they are shown)."""
        data = self.effective().to_dict()
        for key in ("methods", "out", "plots", "resume", "torch_threads", "jobs", "dataset", "quick"):
            data.pop(key, None)
        data["options"] = data["options"].get(method.replace("-", "_"))
        payload = json.dumps({"dataset": dataset, "method": method, **data}, sort_keys=True)
        return hashlib.sha1(payload.encode()).hexdigest()[:16]


class CharacterizeConfig(DataOptions):
    """`personalign data characterize`: disagreement, consistency, minority users, room for personalization."""

    dataset: str = Field("dsp", description="data set name or .jsonl file")
    split: str = Field("all", description="all, train or test")
    out: str | None = Field(None, description="write the JSON report here")
    seed: int = 0

    @field_validator("split")
    @classmethod
    def _split(cls, value: str) -> str:
        if value not in ("all", "train", "test"):
            raise ValueError("split must be all, train or test")
        return value


def parse_set_options(items: list[str] | None) -> dict[str, Any]:
    """`--set a.b=value` items → {'a.b': value}, values parsed as YAML scalars (numbers, booleans, lists)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise PersonalignError(f"--set {item!r}: expected KEY=VALUE, e.g. --set options.personalized.alpha=0.7")
        try:
            out[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise PersonalignError(f"--set {item!r}: cannot parse the value {raw!r}") from None
    return out
