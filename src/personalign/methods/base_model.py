"""`base`: the model with no personalization (the user prompt alone); the baseline of every comparison."""

from __future__ import annotations

from personalign.methods.base import Personalizer


class BaseModelMethod(Personalizer):
    name = "base"
