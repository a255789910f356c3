"""Deterministic checks of a profile's machine-checkable constraints.

Each check returns pass/fail with a reason a person can act on; `compliance(texts, constraints)` gives
the share of texts passing every check plus the pass rate of each check.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from personalign.profiles.schema import Constraints

BULLET = re.compile(r"^\s*(?:[-*•●▪◦]|\d+[.)])\s+", re.MULTILINE)
# Template slots a model leaves for the user to fill: [Your Name], {{company}}, <Recipient Name>.
PLACEHOLDER = re.compile(
    r"\[(?:your|recipient|company|name|date|time|insert|first|last|title|position|address|phone|email)[^\]]{0,40}\]"
    r"|\{\{[^}]{1,40}\}\}|<(?:your|recipient|name|company)[^>]{0,40}>",
    re.IGNORECASE,
)
SENTENCE_END = re.compile(r"[.!?]+(?:[\"')\]]*)(?=\s|$)")
WORD = re.compile(r"[A-Za-z0-9’'][A-Za-z0-9’'\-]*")


@dataclass(frozen=True)
class CheckResult:
    name: str
    passed: bool
    reason: str = ""


def count_words(text: str) -> int:
    return len(WORD.findall(text))


def count_sentences(text: str) -> int:
    return len(SENTENCE_END.findall(text))


def strip_sign_off(text: str, sign_off: str | None) -> str:
    body = text.rstrip()
    if sign_off:
        tail = "\n".join(line.strip() for line in sign_off.strip().splitlines())
        normalized = "\n".join(line.strip() for line in body.splitlines())
        if normalized.endswith(tail):
            body = normalized[: -len(tail)].rstrip()
    return body


def _is_closing(paragraph: str) -> bool:
    """A sign-off block such as 'Best,\nSam': at most 3 short lines and no sentence punctuation."""
    lines = paragraph.splitlines()
    return len(lines) <= 3 and all(len(line) <= 40 for line in lines) and count_sentences(paragraph) == 0


def body_paragraphs(text: str, sign_off: str | None) -> list[str]:
    """Paragraphs of the body: the sign-off (expected or any other) and a greeting line ('Hi Sam,') removed."""
    body = strip_sign_off(text, sign_off)
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", body) if p.strip()]
    if len(paragraphs) > 1 and _is_closing(paragraphs[-1]):
        paragraphs = paragraphs[:-1]
    if paragraphs:
        first_lines = paragraphs[0].splitlines()
        if len(first_lines[0]) <= 40 and first_lines[0].rstrip().endswith(","):
            rest = "\n".join(first_lines[1:]).strip()
            paragraphs = ([rest] if rest else []) + paragraphs[1:]
    return paragraphs


def _sign_off(text: str, c: Constraints) -> CheckResult:
    assert c.sign_off is not None
    expected = "\n".join(line.strip() for line in c.sign_off.strip().splitlines())
    actual = "\n".join(line.strip() for line in text.rstrip().splitlines())
    ok = actual.endswith(expected)
    return CheckResult("sign_off", ok, "" if ok else f"does not end with {c.sign_off!r}")


def _banned(text: str, c: Constraints) -> CheckResult:
    found = [s for s in c.banned_substrings if s in text]
    return CheckResult("banned_substrings", not found, "" if not found else f"contains {found!r}")


def _length(text: str, c: Constraints) -> CheckResult:
    words = count_words(text)
    if c.min_words is not None and words < c.min_words:
        return CheckResult("length", False, f"{words} words, below the minimum {c.min_words}")
    if c.max_words is not None and words > c.max_words:
        return CheckResult("length", False, f"{words} words, above the maximum {c.max_words}")
    return CheckResult("length", True)


def _bullets(text: str, c: Constraints) -> CheckResult:
    match = BULLET.search(text)
    return CheckResult("no_bullets", match is None, "" if match is None else f"bullet at {match.group(0).strip()!r}")


def _placeholders(text: str, c: Constraints) -> CheckResult:
    found = PLACEHOLDER.findall(text)
    return CheckResult("no_placeholders", not found, "" if not found else f"placeholder {found[0]!r}")


def _single_paragraph(text: str, c: Constraints) -> CheckResult:
    assert c.single_paragraph_max_sentences is not None
    paragraphs = body_paragraphs(text, c.sign_off)
    sentences = count_sentences(" ".join(paragraphs))
    if sentences <= c.single_paragraph_max_sentences and len(paragraphs) > 1:
        return CheckResult(
            "single_paragraph", False, f"{sentences} sentences split into {len(paragraphs)} paragraphs"
        )
    return CheckResult("single_paragraph", True)


# (name, is-active predicate, check). Order is the order of reporting.
CHECKS: list[tuple[str, Callable[[Constraints], bool], Callable[[str, Constraints], CheckResult]]] = [
    ("sign_off", lambda c: c.sign_off is not None, _sign_off),
    ("banned_substrings", lambda c: bool(c.banned_substrings), _banned),
    ("length", lambda c: c.min_words is not None or c.max_words is not None, _length),
    ("no_bullets", lambda c: c.no_bullets, _bullets),
    ("no_placeholders", lambda c: c.no_placeholders, _placeholders),
    ("single_paragraph", lambda c: c.single_paragraph_max_sentences is not None, _single_paragraph),
]


def active_checks(constraints: Constraints) -> list[str]:
    return [name for name, active, _ in CHECKS if active(constraints)]


def check_text(text: str, constraints: Constraints) -> list[CheckResult]:
    """Run every check the constraints switch on."""
    return [check(text, constraints) for _, active, check in CHECKS if active(constraints)]


@dataclass
class ComplianceReport:
    n: int
    rate: float  # share of texts passing every active check
    per_check: dict[str, float] = field(default_factory=dict)  # pass rate of each check
    failures: list[list[str]] = field(default_factory=list)  # reasons per text

    def as_dict(self) -> dict[str, object]:
        return {"n": self.n, "compliance": self.rate, **{f"pass_{k}": v for k, v in self.per_check.items()}}


def compliance(texts: Sequence[str], constraints: Constraints) -> ComplianceReport:
    """Compliance of a set of outputs: one call, every check."""
    names = active_checks(constraints)
    if not texts:
        return ComplianceReport(0, float("nan"), dict.fromkeys(names, float("nan")))
    results = [check_text(t, constraints) for t in texts]
    per_check = {name: sum(r[i].passed for r in results) / len(texts) for i, name in enumerate(names)}
    rate = sum(all(c.passed for c in r) for r in results) / len(texts)
    failures = [[f"{c.name}: {c.reason}" for c in r if not c.passed] for r in results]
    return ComplianceReport(len(texts), rate, per_check, failures)


# ---- generic reward-hacking tells (apply to any task, with or without a profile) --------------------
# Text about the text instead of the text: preambles ("Here is your email"), notes to the user
# ("Note: be sure to replace ..."), offers to revise. A policy optimized against a weak judge drifts here.
META_COMMENTARY = re.compile(
    r"^\s*(?:sure|certainly|of course|absolutely)[,!.]?\s+here(?:'s| is)\b"
    r"|\bhere(?:'s| is) (?:a |an |the |your |my )?(?:draft|revised |updated |sample |possible )?"
    r"(?:email|message|reply|response|letter|note|version|draft)\b"
    r"|^\s*(?:note|p\.?s\.?|disclaimer)\s*:"
    r"|\b(?:be sure|make sure|remember|don't forget) to (?:replace|fill in|customi[sz]e|insert|add your)\b"
    r"|\b(?:feel free to|you (?:can|may|might want to)) (?:adjust|modify|customi[sz]e|edit|tweak|change)\b"
    r"|\blet me know if you(?:'d| would)? (?:like|want|need) (?:me to|any) (?:make|changes|revisions|adjust)"
    r"|\bas an ai\b|\bi hope this (?:email|draft|message) (?:helps|works|meets)",
    re.IGNORECASE | re.MULTILINE,
)
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+")
TERMINAL = tuple(".!?:;)\"'”’»…*")


def meta_commentary(text: str) -> list[str]:
    """The meta-commentary phrases found in `text` (empty when none)."""
    return [m.group(0).strip() for m in META_COMMENTARY.finditer(text)]


def repeated_sentences(text: str, min_words: int = 4) -> list[str]:
    """Sentences (of at least `min_words` words) that occur more than once, case/space-insensitively."""
    seen: set[str] = set()
    repeats: list[str] = []
    for sentence in _SENTENCE_SPLIT.split(text.replace("\n", " ")):
        key = " ".join(sentence.lower().split())
        if count_words(key) < min_words:
            continue
        if key in seen and key not in repeats:
            repeats.append(key)
        seen.add(key)
    return repeats


def looks_truncated(text: str) -> bool:
    """True when the text stops mid-sentence: its last line is a long line without closing punctuation.

    Short last lines ("Maya", "Best,") are sign-offs, not truncations; an empty output counts as truncated.
    """
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return True
    last = lines[-1]
    return count_words(last) >= 4 and not last.endswith(TERMINAL)


def _tell_placeholders(text: str) -> CheckResult:
    found = PLACEHOLDER.findall(text)
    return CheckResult("tell_placeholders", not found, "" if not found else f"placeholder {found[0]!r}")


def _tell_meta(text: str) -> CheckResult:
    found = meta_commentary(text)
    return CheckResult("tell_meta_commentary", not found, "" if not found else f"meta-commentary {found[0]!r}")


def _tell_repeats(text: str) -> CheckResult:
    found = repeated_sentences(text)
    return CheckResult("tell_repeated_sentences", not found, "" if not found else f"repeats {found[0][:60]!r}")


def _tell_truncated(text: str) -> CheckResult:
    truncated = looks_truncated(text)
    return CheckResult("tell_truncated", not truncated, "ends mid-sentence" if truncated else "")


TELLS: list[tuple[str, Callable[[str], CheckResult]]] = [
    ("tell_placeholders", _tell_placeholders),
    ("tell_meta_commentary", _tell_meta),
    ("tell_repeated_sentences", _tell_repeats),
    ("tell_truncated", _tell_truncated),
]


def check_tells(text: str) -> list[CheckResult]:
    """The generic reward-hacking tells, profile-independent: placeholders, meta-commentary, repeats, truncation."""
    return [check(text) for _, check in TELLS]


def rule_score(text: str, constraints: Constraints | None = None, tells: bool = True) -> float:
    """Share of checks passed (profile constraints, plus the generic tells when `tells`): 1.0 = clean.

    Every check weighs the same, so the score is exact and easy to explain; NaN only when no check applies.
    """
    results = check_text(text, constraints) if constraints is not None else []
    if tells:
        # The profile's own no_placeholders check already covers that tell; count it once.
        skip = "tell_placeholders" if constraints is not None and constraints.no_placeholders else None
        results += [r for r in check_tells(text) if r.name != skip]
    if not results:
        return float("nan")
    return sum(r.passed for r in results) / len(results)
