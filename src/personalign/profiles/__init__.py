"""User profiles: who the model should write like (demonstrations, rules, constraints, rubric)."""

from personalign.profiles.loading import load_profile
from personalign.profiles.schema import (
    Constraints,
    Demonstration,
    EvalPrompt,
    Profile,
    Rubric,
    RubricCriterion,
)

__all__ = ["Constraints", "Demonstration", "EvalPrompt", "Profile", "Rubric", "RubricCriterion", "load_profile"]
