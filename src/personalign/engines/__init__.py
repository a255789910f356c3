"""Training engines: the protocol (`engines.base`), client-side rendering (`engines.render`), and the engines.

`build_engine(name, backend, lora)` is the one place a method gets its engine; new engines register here.
"""

from __future__ import annotations

from typing import Any

from personalign.engines.base import LoraSettings, TrainingEngine
from personalign.errors import PersonalignError

ENGINES = ("local", "accelerate", "tinker")


def build_engine(name: str, backend: Any, lora: LoraSettings, init_adapter: str | None = None) -> TrainingEngine:
    """A trainable model on engine `name` from the backend's base model (LoRA, or full FT)."""
    if name in ("local", "accelerate"):
        from personalign.backends.base import TrainableBackend

        if not isinstance(backend, TrainableBackend):
            raise PersonalignError(
                f"engine {name!r} trains an in-process model and needs a local model backend (backend: hf), "
                f"got {type(backend).__name__}"
            )
        if name == "accelerate":
            from personalign.engines.accelerate import AccelerateEngine

            return AccelerateEngine(backend, lora, init_adapter)
        from personalign.engines.local import LocalEngine

        return LocalEngine(backend, lora, init_adapter)
    if name == "tinker":
        from personalign.backends.tinker import TinkerBackend
        from personalign.engines.tinker import TinkerEngine

        if not isinstance(backend, TinkerBackend):
            raise PersonalignError(f"engine 'tinker' trains on a Tinker service and needs model.backend: tinker "
                                   f"(`personalize --engine tinker` sets it), got {type(backend).__name__}")
        return TinkerEngine(backend, lora, init_adapter)
    raise PersonalignError(f"unknown engine {name!r}; choose one of: {', '.join(ENGINES)}")
