"""Synthetic SFT data from a profile: structured task prompts, best-of-n in-style outputs, checks, safe repairs.

Why structured prompts: a small teacher asked to invent requests writes "Here's a possible request:" instead
of a request. So task prompts are built from structure (recipient, relationship, purpose, details, length
class), drawn from the demonstrations' prompts (their purposes and recipients' roles) and a built-in bank
of everyday email situations; seeded, deduplicated, and never equal to one of the profile's eval prompts
(nor using a name that appears in them). A strong teacher may rephrase each structured request
(`prompt_source="teacher"`, any backend); a rephrasing that fails the prompt checks falls back to the
structured text, counted.

Outputs: the teacher writes `best_of` samples per prompt under the profile's prompt (the `prompt` method).
Deterministic repairs that cannot change what a text says (a missing sign-off appended in place of another
closing, a banned substring replaced as `replacements` says, a meta-commentary preamble line dropped) are
applied when `repairs` is on and logged on the row and in the report. A sample is kept only if it then
passes every constraint and the generic tells; an unrepaired passing sample is preferred to a repaired one.
Then near-duplicates are dropped (embedding cosine above the threshold to a kept output or a demonstration).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from personalign.backends.base import GenerationBackend
from personalign.config import Config, ModelConfig, SamplingConfig
from personalign.errors import DataError
from personalign.io import atomic_write_json, atomic_write_jsonl, read_jsonl
from personalign.judges.rules import (
    META_COMMENTARY,
    SENTENCE_END,
    _is_closing,
    check_tells,
    check_text,
    count_words,
    looks_truncated,
)
from personalign.profiles.schema import Profile
from personalign.splits import near_duplicates_of

SYNTHETIC_FILE = "synthetic.jsonl"
REPORT_FILE = "synthetic_report.json"
LENGTH_CLASSES = ("short", "medium", "detailed")
DETAILS_PER_LENGTH = {"short": 1, "medium": 2, "detailed": 3}

# ---- the built-in bank of everyday email situations ------------------------------------------------
# (purpose, opening with a {who} slot, details). Each rendered prompt = opening + 1-3 details.
SITUATIONS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("meeting", "Ask {who} for a short meeting", (
        "I want to talk about my plans for next semester.", "Any afternoon next week works for me.",
        "A video call is fine.", "It should take about twenty minutes.", "I would like feedback on my draft.")),
    ("thanks", "Thank {who} for their help", (
        "They spent an hour walking me through the budget spreadsheet.", "Their advice helped me finish on time.",
        "Mention that the presentation went well.", "Offer to return the favor.", "It was last Thursday.")),
    ("follow_up", "Follow up with {who} about my earlier email", (
        "I sent it ten days ago and have not heard back.", "It was about the open research position.",
        "Restate that I am still very interested.", "Ask whether they need anything else from me.",
        "The deadline is next Monday.")),
    ("decline", "Politely decline an invitation from {who}", (
        "The invitation is to a weekend workshop.", "I have a prior family commitment.",
        "Say I would love to be invited next time.", "Suggest a colleague who might attend instead.",
        "The event is on Saturday.")),
    ("introduction", "Introduce myself to {who}", (
        "We met briefly at the campus career fair.", "I am interested in their team's work on climate data.",
        "Ask if they have time for a quick call.", "Mention that a mutual friend suggested I write.",
        "I am graduating in the spring.")),
    ("favor", "Ask {who} for a small favor", (
        "I need someone to water my plants while I am away for a week.", "I can return the favor anytime.",
        "I leave on the 14th.", "No worries at all if they are busy.", "I can drop off the keys on Sunday.")),
    ("confirm", "Confirm plans with {who}", (
        "We are meeting at the library cafe on Wednesday at 3pm.", "I will bring the printed handouts.",
        "Ask them to text me if anything changes.", "It is the second meeting about the group project.",
        "Mention that parking is easiest on the north side.")),
    ("apology", "Apologize to {who} for missing our call", (
        "My bus was delayed by almost an hour.", "Offer two new times later this week.",
        "Say I know their time is valuable.", "It was supposed to be at 10am today.",
        "I have set a reminder so it does not happen again.")),
    ("good_news", "Share some good news with {who}", (
        "I passed my qualifying exam.", "Their study tips made a real difference.",
        "Invite them to a small celebration on Friday.", "I start the new role in September.",
        "Mention that I could not have done it alone.")),
    ("question", "Ask {who} a question about the upcoming deadline", (
        "I am not sure whether the report should include the appendix.", "The deadline is Friday at noon.",
        "Ask whether a draft can be submitted early for comments.", "Mention that I checked the guidelines first.",
        "A short answer is fine.")),
    ("extension", "Ask {who} for a short extension", (
        "I was sick for three days this week.", "Two more days would be enough.",
        "Most of the work is already done.", "Offer to send what I have so far.",
        "The original due date is Thursday.")),
    ("reference", "Ask {who} whether they would be a reference for me", (
        "I am applying for a research assistant position.", "The application is due in three weeks.",
        "Offer to send my resume and the job description.", "Mention the project we worked on together.",
        "Only a short letter is needed.")),
    ("congratulate", "Congratulate {who} on their promotion", (
        "I heard the news at the team meeting.", "They have always been generous with their time.",
        "Suggest coffee to celebrate.", "Mention how much I learned working with them.",
        "Wish them luck with the new team.")),
    ("reschedule", "Ask {who} to reschedule our meeting", (
        "Our meeting is on Tuesday morning.", "A class was moved into that slot.",
        "Wednesday or Thursday afternoon would work.", "Apologize for the short notice.",
        "Offer to meet online if that is easier.")),
    ("invite", "Invite {who} to a small event", (
        "It is a potluck dinner on Saturday evening.", "They can bring a friend.",
        "Ask them to reply by Wednesday.", "There will be vegetarian options.", "It starts at 6pm at my place.")),
    ("feedback", "Ask {who} for feedback on my work", (
        "It is a two-page project proposal.", "I would value their honest opinion.",
        "I hope to submit it by the end of the month.", "Any comments on the structure would help most.",
        "Offer to meet to discuss it.")),
    ("welcome", "Welcome {who} to the team", (
        "They start on Monday.", "Offer to show them around the office.", "Suggest lunch in their first week.",
        "Mention the weekly team meeting on Wednesdays.", "Say I am glad to have them.")),
    ("request_info", "Ask {who} for information about a program", (
        "It is the summer mentoring program.", "I want to know how many hours it takes each week.",
        "Ask whether first-year students can apply.", "Mention that I read the website first.",
        "Ask about the application deadline.")),
    ("condolence", "Write a kind note to {who} who is recovering from surgery", (
        "Wish them a smooth recovery.", "Offer to cover their tasks while they are away.",
        "Say there is no need to reply.", "Mention that the team misses them.", "Offer to bring a meal.")),
    ("update", "Send {who} a short update on the project", (
        "The survey closed with 120 responses.", "The first results look promising.",
        "The draft report will be ready next week.", "Ask whether they want to review it first.",
        "One section is a little behind schedule.")),
)

# Roles a recipient can have, with the relationship the prompt states; the demonstrations' roles are added.
ROLES: tuple[str, ...] = (
    "professor", "academic advisor", "teaching assistant", "classmate", "lab manager", "recruiter",
    "former manager", "mentor", "teammate", "club president", "neighbor", "landlord", "friend",
    "colleague", "program coordinator", "graduate student", "career counselor", "project partner",
)
FIRST_NAMES: tuple[str, ...] = (
    "Nina", "Marcus", "Leah", "Tariq", "Sofia", "Daniel", "Mei", "Jonas", "Carmen", "Felix", "Hana", "Victor",
    "Irene", "Kwame", "Lucia", "Peter", "Yara", "Oscar", "Ruth", "Samir", "Tessa", "Hugo", "Anya", "Diego",
    "Claire", "Malik", "Greta", "Arjun", "Elise", "Theo",
)
LAST_NAMES: tuple[str, ...] = (
    "Patel", "Okafor", "Lindqvist", "Moreau", "Tanaka", "Haddad", "Novak", "Rossi", "Schmidt", "Quinn",
    "Mendez", "Kowalski", "Fischer", "Adeyemi", "Larsen", "Costa", "Ibrahim", "Walsh", "Yamamoto", "Dubois",
)
# Leading verbs of a demonstration prompt → the bank's purpose, so purposes the person writes get weight.
PURPOSE_VERBS: dict[str, str] = {
    "thank": "thanks", "ask": "favor", "introduce": "introduction", "follow": "follow_up", "decline": "decline",
    "confirm": "confirm", "apologize": "apology", "congratulate": "congratulate", "invite": "invite",
    "reschedule": "reschedule", "welcome": "welcome", "share": "good_news", "update": "update",
}
_ROLE_AFTER_ARTICLE = re.compile(r"\b(?:a|an|my|our) ([a-z]+(?: (?!at\b|who\b)[a-z]+)?)(?= at\b| who\b|,| [A-Z])")
_NAME = re.compile(r"\b[A-Z][a-z]+\b")
_STOP_ROLES = {"couple", "few", "lot", "short", "long", "new", "great", "big", "small", "quick"}


@dataclass(frozen=True)
class PromptSpec:
    """The structure of one synthetic task prompt."""

    purpose: str
    recipient: str
    relationship: str
    details: tuple[str, ...]
    length: str
    text: str


def _normalize(text: str) -> str:
    return " ".join(text.split()).casefold()


def demonstration_structure(profile: Profile) -> tuple[list[str], list[str]]:
    """(purposes, recipient roles) read from the demonstrations' prompts (leading verb; 'a <role> at/,/who')."""
    purposes: list[str] = []
    roles: list[str] = []
    for demo in profile.demonstrations:
        words = demo.prompt.split()
        verb = words[0].lower().strip(",.") if words else ""
        if verb == "reply":
            verb = "confirm"
        if verb in PURPOSE_VERBS:
            purposes.append(PURPOSE_VERBS[verb])
        for match in _ROLE_AFTER_ARTICLE.finditer(demo.prompt):
            role = match.group(1).strip()
            if role.split()[0] not in _STOP_ROLES and len(role) <= 30:
                roles.append(role)
    return purposes, roles


def build_prompts(profile: Profile, n: int, seed: int) -> list[PromptSpec]:
    """n distinct structured task prompts, seeded; none equals an eval prompt or uses a name from one."""
    rng = random.Random(seed)
    demo_purposes, demo_roles = demonstration_structure(profile)
    by_purpose = {s[0]: s for s in SITUATIONS}
    # Purposes the person's own prompts show count three times; every bank purpose stays possible.
    purposes = [s[0] for s in SITUATIONS] + [p for p in demo_purposes if p in by_purpose] * 3
    roles = list(dict.fromkeys([*ROLES, *demo_roles]))
    eval_texts = [e.prompt for e in profile.eval_prompts]
    taken_names = {w for text in eval_texts + [d.prompt for d in profile.demonstrations] for w in _NAME.findall(text)}
    first_names = [f for f in FIRST_NAMES if f not in taken_names]
    last_names = [s for s in LAST_NAMES if s not in taken_names]
    blocked = {_normalize(t) for t in eval_texts} | {_normalize(d.prompt) for d in profile.demonstrations}
    seen: set[str] = set()
    specs: list[PromptSpec] = []
    # Bounded: the bank has far more combinations than any n in use, so collisions only cost a retry.
    for _ in range(max(50, 50 * n)):
        if len(specs) >= n:
            break
        purpose, opening, details = by_purpose[rng.choice(purposes)]
        role = rng.choice(roles)
        name = f"{rng.choice(first_names)} {rng.choice(last_names)}"
        if role in ROLES:
            who = f"{name}, my {role}," if rng.random() < 0.5 else f"my {role}, {name},"
        else:  # a role read from a demonstration ('a data scientist') keeps its article, not 'my'
            who = f"{name}, {'an' if role[0] in 'aeiou' else 'a'} {role},"
        length = rng.choice(LENGTH_CLASSES)
        chosen = tuple(rng.sample(details, DETAILS_PER_LENGTH[length]))
        head = opening.format(who=who)
        head = head[:-1] if head.endswith(",") else head
        text = f"{head}. {' '.join(chosen)}".replace(",.", ".")
        key = _normalize(text)
        if key in seen or key in blocked:
            continue
        seen.add(key)
        specs.append(PromptSpec(purpose, name, role, chosen, length, text))
    return specs


# ---- the optional teacher rephrasing of each structured request ------------------------------------
_BAD_PROMPT = re.compile(r"\b(?:here(?:'s| is)|example|request\s*:|sure|certainly|assistant)\b", re.IGNORECASE)


def rephrase_request(profile: Profile, spec: PromptSpec) -> list[dict[str, str]]:
    """A chat asking a (strong) teacher to rephrase one structured request as a person would type it."""
    return [
        {"role": "system", "content": f"You rewrite notes into one-line requests people give an assistant to "
                                      f"{profile.task}."},
        {"role": "user", "content": f"Rewrite as one natural request, keeping every name and detail:\n{spec.text}\n"
                                    "Reply with the request only."},
    ]


def clean_prompt(text: str) -> str:
    """First non-empty line, with list markers, 'Request:' labels and wrapping quotes removed."""
    for line in text.splitlines():
        line = re.sub(r"^\s*(?:(?:[-*•]|\d+[.)])\s*)+", "", line).strip()
        line = re.sub(r"^(?:new\s+)?request\s*:\s*", "", line, flags=re.IGNORECASE).strip().strip('"“”').strip()
        if line:
            return line
    return ""


def usable_rephrasing(text: str, spec: PromptSpec) -> bool:
    """A rephrasing is kept only if it is a real request that still names the recipient."""
    return len(text.split()) >= 5 and not _BAD_PROMPT.search(text) and spec.recipient.split()[0] in text


# ---- safe, deterministic repairs ---------------------------------------------------------------------
def repair(text: str, profile: Profile, replacements: dict[str, str]) -> tuple[str, list[str]]:
    """(repaired text, names of the repairs applied). Each repair changes form, never content."""
    applied: list[str] = []
    lines = text.strip().splitlines()
    # A meta-commentary preamble line ("Here is your email:") before the text proper.
    if len(lines) > 1 and META_COMMENTARY.search(lines[0]) and len(lines[0].split()) <= 12:
        lines = lines[1:]
        while lines and not lines[0].strip():
            lines = lines[1:]
        applied.append("preamble")
    text = "\n".join(lines).strip()
    for banned in profile.constraints.banned_substrings:
        if banned in text and banned in replacements:
            # Spaces before the substring go with it ("a — b" → "a; b"); after it only when the replacement
            # brings its own ("Thanks! See" → "Thanks. See").
            new = replacements[banned]
            pattern = rf"[ \t]*{re.escape(banned)}" + (r"[ \t]*" if new.endswith(" ") else "")
            text = re.sub(pattern, new, text).rstrip()
            applied.append(f"banned:{banned}")
    sign_off = profile.constraints.sign_off
    if sign_off:
        expected = "\n".join(line.strip() for line in sign_off.strip().splitlines())
        normalized = "\n".join(line.strip() for line in text.splitlines())
        if not normalized.endswith(expected):
            # Another closing ("Best,\n[Your Name]", as its own paragraph or the last short lines) gives way.
            paragraphs = re.split(r"\n\s*\n", text)
            if len(paragraphs) > 1 and _is_closing(paragraphs[-1].strip()):
                paragraphs = paragraphs[:-1]
            last = paragraphs[-1].splitlines()
            for _ in range(3):
                if len(last) > 1 and len(last[-1].split()) <= 4 and not SENTENCE_END.search(last[-1]):
                    last = last[:-1]
            paragraphs[-1] = "\n".join(last)
            text = "\n\n".join(p.rstrip() for p in paragraphs).rstrip() + "\n\n" + sign_off.strip()
            applied.append("sign_off")
    return text, applied


DEFAULT_REPLACEMENTS = {"—": "; ", "–": "; ", "!": "."}


class SyntheticConfig(Config):
    """How much synthetic data to make, how to write it and how to filter it."""

    n_keep: int = Field(16, ge=0, description="synthetic examples to keep (0 = demonstrations only)")
    n_candidates: int = Field(20, ge=0, description="task prompts to build; ≥ 80 % are kept with the default "
                                                    "teacher on the example profile (BENCHMARKS.md, synthetic)")
    prompt_source: Literal["structured", "teacher"] = Field(
        "structured", description="structured: prompts from the built-in bank; teacher: the teacher rephrases "
        "each structured prompt (for a strong teacher)")
    teacher: ModelConfig | None = Field(None, description="teacher model; None = the model being trained")
    best_of: int = Field(4, ge=1, description="samples per prompt; the best passing one is kept")
    prompt_temperature: float = Field(0.7, ge=0.0)
    output_temperature: float = Field(0.7, ge=0.0)
    max_new_tokens: int = Field(192, ge=8)
    repairs: bool = Field(True, description="apply the safe deterministic repairs (logged per row)")
    replacements: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_REPLACEMENTS),
        description="banned substring → its replacement for the repair (em dash → semicolon, as the rules say)")
    dedup_threshold: float = Field(0.9, gt=0.0, le=1.0, description="drop outputs with cosine above this")
    fewshot_k: int | None = Field(None, ge=1, description="demonstrations shown to the teacher; None = all")
    embedder: str = "minilm"
    seed: int = 0


def near_duplicates(vectors: np.ndarray, reference: np.ndarray, threshold: float) -> list[bool]:
    """Greedy filter: item i is a duplicate if its cosine to a reference vector or an earlier kept item > threshold."""
    kept: list[np.ndarray] = []
    flags: list[bool] = []
    for vec in vectors:
        pool = np.vstack([reference, *kept]) if (len(reference) or kept) else np.zeros((0, vectors.shape[1]))
        duplicate = bool(len(pool)) and float((pool @ vec).max()) > threshold
        flags.append(duplicate)
        if not duplicate:
            kept.append(vec[None, :])
    return flags


def demonstration_words(profile: Profile) -> float | None:
    """Median word count of the profile's demonstrations: the length best-of-n aims for."""
    counts = [count_words(d.output) for d in profile.demonstrations]
    return float(np.median(counts)) if counts else None


def _choose(samples: Sequence[str], profile: Profile, config: SyntheticConfig,
            target: float | None) -> tuple[str | None, list[str], list[str]]:
    """Best of n: (chosen text or None, its repairs, failing checks of the best rejected sample).

    Among the samples that pass every check, one that needed no repair wins, and then the one whose length is
    closest to `target` (the demonstrations' median, `demonstration_words`). Taking the first passing sample
    instead kept rows near the length check's lower bound, and SFT on them wrote emails too short for it
    (BENCHMARKS.md, full CPU settings).
    """
    best_failures: list[str] | None = None
    passing: list[tuple[str, list[str]]] = []
    for sample in samples:
        if not sample.strip():
            best_failures = best_failures or ["empty_output"]
            continue
        if looks_truncated(sample):
            # Cut off mid-sentence: appending a sign-off would hide it, so no repair can save it.
            best_failures = best_failures or ["tell_truncated"]
            continue
        candidates: list[tuple[str, list[str]]] = [(sample, [])]
        if config.repairs:
            fixed, applied = repair(sample, profile, config.replacements)
            if applied:
                candidates.append((fixed, applied))
        for text, applied in candidates:
            results = check_text(text, profile.constraints) + check_tells(text)
            failures = [r.name for r in results if not r.passed]
            if not failures:
                passing.append((text, applied))
                break
            if best_failures is None or len(failures) < len(best_failures):
                best_failures = failures
    if passing:
        text, applied = min(passing, key=lambda c: (bool(c[1]),
                                                     0.0 if target is None else abs(count_words(c[0]) - target)))
        return text, applied, []
    return None, [], best_failures or ["empty_output"]


def generate_synthetic(
    profile: Profile, teacher: GenerationBackend, config: SyntheticConfig, progress: bool = False
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Build prompts, write best-of-n outputs, repair, filter; return (kept rows, report of counts per reason)."""
    from personalign.backends.embedder import get_embedder
    from personalign.methods.prompting import PromptMethod

    specs = build_prompts(profile, config.n_candidates, config.seed)
    prompts = [s.text for s in specs]
    rejected: Counter[str] = Counter()
    failed_checks: Counter[str] = Counter()
    repaired: Counter[str] = Counter()
    if config.prompt_source == "teacher" and specs:
        raw = teacher.generate([rephrase_request(profile, s) for s in specs], SamplingConfig(
            temperature=config.prompt_temperature, max_new_tokens=64, seed=config.seed), progress=progress)
        for i, (spec, (text,)) in enumerate(zip(specs, raw, strict=True)):
            cleaned = clean_prompt(text)
            if usable_rephrasing(cleaned, spec) and _normalize(cleaned) not in {_normalize(e.prompt)
                                                                                for e in profile.eval_prompts}:
                prompts[i] = cleaned
            else:
                repaired["prompt_fallback_structured"] += 1
    # Held out by construction: a prompt near (embedding cosine) an eval prompt would train on it (splits).
    evals = [e.prompt for e in profile.eval_prompts]
    near_eval = {p for p, dup in zip(prompts, near_duplicates_of(
        prompts, evals, get_embedder(config.embedder) if prompts and evals else None, config.dedup_threshold),
        strict=True) if dup}

    writer = PromptMethod(teacher, PromptMethod.config_class(k=config.fewshot_k))
    writer.fit(profile)
    outputs = writer.generate(prompts, SamplingConfig(
        n=config.best_of, temperature=config.output_temperature, max_new_tokens=config.max_new_tokens,
        seed=config.seed + 1), progress=progress) if prompts else []

    passing: list[dict[str, Any]] = []
    target = demonstration_words(profile)
    for spec, prompt, samples in zip(specs, prompts, outputs, strict=True):
        if prompt in near_eval:
            rejected["near_eval_prompt"] += 1
            continue
        text, applied, failures = _choose(samples, profile, config, target)
        if text is None:
            rejected[f"check:{failures[0]}"] += 1  # counted once, under the first failing check of the best sample
            failed_checks.update(failures)
            continue
        repaired.update(applied)
        passing.append({"prompt": prompt, "output": text, "source": "synthetic", "repairs": applied,
                        "purpose": spec.purpose, "length": spec.length})

    kept: list[dict[str, Any]] = []
    if passing:
        embedder = get_embedder(config.embedder)
        vectors = embedder.encode([r["output"] for r in passing])
        reference = embedder.encode([d.output for d in profile.demonstrations])
        for row, dup in zip(passing, near_duplicates(vectors, reference, config.dedup_threshold), strict=True):
            if dup:
                rejected["near_duplicate"] += 1
            elif len(kept) >= config.n_keep:
                rejected["over_n_keep"] += 1
            else:
                kept.append(row)
    generated = len(specs)
    report = {
        "generated": generated,
        "repaired": sum(1 for r in kept if r["repairs"]),
        "repairs": dict(sorted(repaired.items())),
        "rejected": dict(sorted(rejected.items())),
        "failed_checks": dict(sorted(failed_checks.items())),
        "kept": len(kept),
        "kept_rate": round(len(kept) / generated, 3) if generated else None,
        "repairs_enabled": config.repairs,
        "prompt_source": config.prompt_source,
        "teacher": teacher.describe(),
    }
    return kept, report


def save_synthetic(folder: Path, rows: Sequence[dict[str, Any]], report: dict[str, Any]) -> Path:
    atomic_write_json(folder / REPORT_FILE, report)
    return atomic_write_jsonl(folder / SYNTHETIC_FILE, rows)


def load_synthetic(path: str | Path) -> list[dict[str, Any]]:
    """Read a synthetic-data JSONL (rows need non-empty `prompt` and `output`)."""
    rows = read_jsonl(path)
    for lineno, row in enumerate(rows, start=1):
        for key in ("prompt", "output"):
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise DataError(
                    f"{path}: row {lineno}: field {key!r} missing or empty; each row needs prompt and output"
                )
    return rows
