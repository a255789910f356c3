"""Read a profile from YAML or JSON with errors that name the file, the field and the fix."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from pydantic import ValidationError

from personalign.errors import ProfileError
from personalign.profiles.schema import Profile

_FIXES = {
    "demonstrations": "add at least one {prompt, output} pair under 'demonstrations'",
    "name": "add 'name: <the person's name>'",
    "task": "add 'task: <what they do, e.g. write emails>'",
}


def field_problems(exc: ValidationError) -> list[tuple[str, str]]:
    """(dotted field, one-line problem) per validation error: the CLI joins them, the studio shows each by its field."""
    problems: list[tuple[str, str]] = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        top = str(err["loc"][0]) if err["loc"] else ""
        if err["type"] == "extra_forbidden":
            from personalign.config import field_paths, suggest

            hint = suggest(loc, field_paths(Profile))
            problems.append((loc, f"field '{loc}' is not a profile field{hint}; remove it or fix its spelling"))
        elif err["type"] == "missing":
            problems.append((loc, f"field '{loc}' is missing; {_FIXES.get(top, 'add it')}"))
        elif err["type"] == "value_error" and not err["loc"]:  # a whole-profile check (e.g. eval prompts held out)
            problems.append((loc, err["msg"].removeprefix("Value error, ")))
        elif err["type"] == "too_short" and top == "demonstrations":
            problems.append((loc, f"field '{loc}' is empty; {_FIXES['demonstrations']}"))
        else:
            problems.append((loc, f"field '{loc}': {err['msg']} (got {err.get('input')!r})"))
    return problems


def _describe(exc: ValidationError, path: Path) -> str:
    return f"{path}: " + "; ".join(problem for _, problem in field_problems(exc))


def parse_profile(data: object, source: str | Path = "<profile>") -> Profile:
    path = Path(source)
    if data is None:
        raise ProfileError(f"{path}: the file is empty; start from configs/profiles/example.yaml")
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: expected a mapping of profile fields, got {type(data).__name__}")
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        raise ProfileError(_describe(exc, path)) from None


def check_demonstrations(profile: Profile, source: str | Path) -> Profile:
    """Refuse demonstrations that break the profile's own constraints (a method would learn the opposite of what
    the constraints score), unless the profile says `accept_failing_demonstrations: true`."""
    if not profile.accept_failing_demonstrations:
        failing = demonstration_failures(profile)
        if failing:
            shown = "; ".join(f"demonstrations[{i}] fails {check}" + (f" ({detail})" if detail else "")
                              for i, check, detail in failing[:3])
            more = f" (and {len(failing) - 3} more)" if len(failing) > 3 else ""
            raise ProfileError(f"{source}: {shown}{more}: fix the demonstration or the constraint, or add "
                               "'accept_failing_demonstrations: true' to keep them knowingly")
    return profile


def demonstration_failures(profile: Profile) -> list[tuple[int, str, str]]:
    """(index, check, detail) of each demonstration output that breaks the profile's own constraints."""
    from personalign.judges.rules import check_text

    return [(i, result.name, result.reason) for i, demo in enumerate(profile.demonstrations)
            for result in check_text(demo.output, profile.constraints) if not result.passed]


def load_profile(path: str | Path) -> Profile:
    """Load and validate a `.yaml`/`.yml`/`.json` profile."""
    path = Path(path)
    if not path.is_file():
        raise ProfileError(f"{path}: profile file not found; see configs/profiles/example.yaml for the format")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProfileError(f"{path}: not UTF-8 text (byte {exc.start}); re-save the file as UTF-8") from None
    if not text.strip():
        raise ProfileError(f"{path}: the file is empty; start from configs/profiles/example.yaml")
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        kind = "JSON" if path.suffix == ".json" else "YAML"
        raise ProfileError(f"{path}: invalid {kind} ({str(exc).splitlines()[0]})") from None
    return check_demonstrations(parse_profile(data, path), path)
