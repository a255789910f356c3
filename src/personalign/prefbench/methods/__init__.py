"""The prefbench methods, one file each, all behind `base.PrefMethod`; `make_method(name, ...)`."""

from __future__ import annotations

from typing import Any

from personalign.errors import PersonalignError
from personalign.prefbench.methods.base import Dimensions, PairSet, PrefMethod, TrainConfig
from personalign.prefbench.methods.conditional import Conditional
from personalign.prefbench.methods.gpo import GPO
from personalign.prefbench.methods.gpo_bt import GPOBT
from personalign.prefbench.methods.individual import Individual
from personalign.prefbench.methods.lora import LoRA
from personalign.prefbench.methods.personalized import Personalized
from personalign.prefbench.methods.rag import RAG
from personalign.prefbench.methods.rag_vote import RAGVote
from personalign.prefbench.methods.soups import RMSoup, Soups
from personalign.prefbench.methods.vanilla import Vanilla
from personalign.prefbench.methods.vpl import VPL

# The study's methods as published (vanilla … rag), each kept variant beside its original (rm-soup,
# gpo-bt, rag-vote), then `lora` (the backbone fine-tuning mode; opt-in, slow on CPU).
METHODS: dict[str, type[PrefMethod]] = {
    cls.name: cls for cls in (Vanilla, Individual, Conditional, Personalized, Soups, RMSoup, VPL, GPO, GPOBT, RAG,
                              RAGVote, LoRA)
}


def options_field(name: str) -> str:
    """The `options.<field>` of a method (hyphens are not valid in field names): rm-soup → rm_soup."""
    return name.replace("-", "_")


def make_method(name: str, options: Any = None, train: TrainConfig | None = None, seed: int = 0) -> PrefMethod:
    if name not in METHODS:
        raise PersonalignError(f"unknown method {name!r}; choose from {', '.join(METHODS)} (or 'all')")
    return METHODS[name](options, train, seed)


__all__ = ["METHODS", "Dimensions", "PairSet", "PrefMethod", "TrainConfig", "make_method", "options_field"]
