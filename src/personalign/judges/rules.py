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


def body_paragraphs(text: str, sign_off: str | None) -> list[str]:
    """Paragraphs of the body: sign-off removed, and a leading greeting line ('Hi Sam,') dropped."""
    body = strip_sign_off(text, sign_off)
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", body) if p.strip()]
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
