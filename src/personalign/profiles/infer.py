"""Infer an editable profile from a person's own texts: demonstrations, constraints from statistics, rules.

`personalign profile infer` reads texts (a JSONL with `text`/`body`/`output` and optional `subject`/`prompt`,
or a folder of .txt/.eml files), derives a prompt for each (DITTO-style, from the subject and the first
sentence; `derive_prompt`), and infers constraints only where the texts agree:

- sign-off: the closing lines (last 1 or 2 lines) shared by at least `sign_off_share` of the texts;
- word range: the `length_quantiles` percentiles, widened by `length_margin` (rounded outwards);
- no bullets: when at most `bullet_share` of the texts use a list marker;
- banned substrings: the style markers of `MARKERS` (em dash, exclamation mark, ...) that no text uses, once
  there are at least `min_texts_for_ban` texts (with fewer, "never used" says little);
- greeting and line wrapping: written as rules (the rule checks have no field for them).

`validity` measures the point of it all: inferred constraints should pass on the person's own held-out texts
(target ≥ 90 %) and on clearly fewer texts of other people. An optional style description comes from any
generation backend (`describe_style`, in the spirit of PROSE / HyPerAlign), kept as one rule.
"""

from __future__ import annotations

import email
import email.policy
import math
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from personalign.config import Config
from personalign.errors import DataError
from personalign.io import read_jsonl, read_text
from personalign.judges.rules import BULLET, compliance
from personalign.profiles.schema import Constraints, Demonstration, EvalPrompt, Profile
from personalign.splits import normalize

# Characters and strings people differ on; one that a person never uses becomes a banned substring.
MARKERS: tuple[str, ...] = ("—", "–", "!", ";", "…", "...", ":)", "*")
_GREETING = re.compile(r"^(?P<word>hi|hello|hey|dear|good (?:morning|afternoon)|greetings)\b[^\n]{0,40}?,?\s*$",
                       re.IGNORECASE)
_NAME_LINE = re.compile(r"^[A-Z][\w.'-]*(?: (?:and|&) [A-Z][\w.'-]*| [A-Z][\w.'-]*)?\s*[,:]\s*$")
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
_REPLY_PREFIX = re.compile(r"^\s*(?:(?:re|fw|fwd)\s*:\s*)+", re.IGNORECASE)
TEXT_KEYS = ("text", "body", "output")


@dataclass(frozen=True)
class SourceText:
    """One text of the person, with the subject when the source has one."""

    text: str
    subject: str | None = None
    prompt: str | None = None
    source: str = ""


class InferConfig(Config):
    """Thresholds of the inference; each says how much agreement turns a statistic into a constraint."""

    sign_off_share: float = Field(0.8, gt=0.0, le=1.0, description="share of texts that must end the same way")
    length_quantiles: tuple[float, float] = Field((0.02, 0.98), description="word-count percentiles kept")
    length_margin: float = Field(0.2, ge=0.0, description="widen the percentile range by this share each side "
                                 "(plus 1/sqrt(n): a few texts show less of the range than many)")
    bullet_share: float = Field(0.05, ge=0.0, le=1.0, description="no_bullets when at most this share uses bullets")
    # Measured on Enron (BENCHMARKS.md, profile infer): from 7 texts, "never used" bans markers that a fifth of
    # the person's other emails use; from 20 on, a marker unused so far stays rare.
    min_texts_for_ban: int = Field(20, ge=1, description="texts needed before 'never used' bans a marker")
    greeting_share: float = Field(0.6, gt=0.0, le=1.0, description="share of texts with one greeting → a rule")
    wrap_share: float = Field(0.8, gt=0.0, le=1.0, description="share of multi-line paragraphs hard-wrapped → a rule")


# ---- reading texts ------------------------------------------------------------------------------
def _from_eml(path: Path) -> SourceText:
    message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    part = message.get_body(preferencelist=("plain",)) if message.is_multipart() else message
    if part is None:
        raise DataError(f"{path}: no text/plain part; save the email as plain text")
    body = part.get_content() if hasattr(part, "get_content") else str(part.get_payload())
    return SourceText(str(body).strip(), str(message.get("subject") or "") or None, source=str(path))


def read_texts(path: str | Path) -> list[SourceText]:
    """Texts from a JSONL file (one object a line) or a folder of .txt / .eml files (sorted by name)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: not found; pass --texts a JSONL file or a folder of .txt/.eml files")
    texts: list[SourceText] = []
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".txt", ".eml"))
        if not files:
            raise DataError(f"{path}: no .txt or .eml files in this folder")
        for file in files:
            texts.append(_from_eml(file) if file.suffix.lower() == ".eml"
                         else SourceText(read_text(file).strip(), source=str(file)))
    else:
        for lineno, row in enumerate(read_jsonl(path), start=1):
            key = next((k for k in TEXT_KEYS if isinstance(row.get(k), str)), None)
            if key is None:
                raise DataError(f"{path}: line {lineno}: no text field; each line needs one of {list(TEXT_KEYS)}")
            texts.append(SourceText(row[key].strip(), row.get("subject") or None, row.get("prompt") or None,
                                    f"{path}:{lineno}"))
    empty = [t.source for t in texts if not t.text]
    if empty:
        raise DataError(f"{empty[0]}: empty text; remove it or fill it in")
    if not texts:
        raise DataError(f"{path}: no texts; add at least 3 of the person's texts")
    return texts


# ---- prompts derived from texts ---------------------------------------------------------------------
def split_greeting(text: str) -> tuple[str | None, str]:
    """(greeting line such as 'Hi Sam,' or 'John,', or None; the rest of the text)."""
    lines = text.strip().splitlines()
    if lines and (_GREETING.match(lines[0].strip()) or _NAME_LINE.match(lines[0].strip())):
        return lines[0].strip(), "\n".join(lines[1:]).strip()
    return None, text.strip()


def opening_sentence(text: str) -> str:
    """The first sentence after any greeting, joined across hard-wrapped lines."""
    _, body = split_greeting(text)
    paragraph = re.split(r"\n\s*\n", body, maxsplit=1)[0] if body else ""
    return _SENTENCE.split(" ".join(paragraph.split()), maxsplit=1)[0].strip()


def derive_prompt(text: str, subject: str | None = None, kind: str = "email") -> tuple[str, str]:
    """(prompt, what it gives away): DITTO's CCAT50 form, 'Write ... that starts with: <first sentence>'.

    The subject (without Re:/Fw:) is named when there is one; a 'Re:' subject asks for a reply. Scorers
    compare only the text after the given sentence (`unseen_part`), so copying the prompt earns nothing.
    """
    given = opening_sentence(text)
    topic = _REPLY_PREFIX.sub("", subject or "").strip()
    what = f"a reply {kind}" if subject and _REPLY_PREFIX.match(subject) else f"an {kind}" if kind[0] in "aeiou" \
        else f"a {kind}"
    about = f' about "{topic}"' if topic else ""
    return f"Write {what}{about} that starts with the following: {given}", given


def unseen_part(text: str, given: str) -> str:
    """`text` without the sentence the prompt gave away (when it contains it), for reference-based scores."""
    flat = " ".join(text.split())
    key = " ".join(given.split())
    if key and key in flat:
        return " ".join(flat.replace(key, " ", 1).split())
    return flat


# ---- statistics → constraints and rules ------------------------------------------------------------
def _closing(text: str, n_lines: int) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return "\n".join(lines[-n_lines:]) if len(lines) > n_lines else ""


def _count_words(text: str) -> int:
    from personalign.judges.rules import count_words

    return count_words(text)


@dataclass
class Inference:
    """What was inferred and the statistics behind each choice (written into the profile as comments)."""

    constraints: Constraints
    rules: list[str]
    evidence: dict[str, Any] = field(default_factory=dict)


def infer_constraints(texts: Sequence[str], config: InferConfig | None = None) -> Inference:
    """Constraints where the texts agree enough, rules from the same statistics, and the evidence."""
    cfg = config or InferConfig()
    n = len(texts)
    if n == 0:
        raise DataError("profile infer: no texts to infer from")
    evidence: dict[str, Any] = {"n_texts": n}
    rules: list[str] = []
    sign_off = None
    for n_lines in (2, 1):  # the longer shared closing ('Thanks,\nMichelle') wins over its last line alone
        closing, count = Counter(_closing(t, n_lines) for t in texts).most_common(1)[0]
        if closing and count / n >= cfg.sign_off_share:
            sign_off = closing
            evidence["sign_off_share"] = round(count / n, 3)
            break
    if sign_off:
        rules.append(f"Sign off with {sign_off.replace(chr(10), ' + line break + ')!r}.")
    words = np.array([_count_words(t) for t in texts])
    low, high = np.quantile(words, cfg.length_quantiles)
    margin = cfg.length_margin + 1 / math.sqrt(n)
    min_words = max(0, int(math.floor(low * max(0.0, 1 - margin) / 5) * 5))
    max_words = max(min_words + 1, int(math.ceil(high * (1 + margin) / 10) * 10))
    evidence["words"] = {"min": int(words.min()), "median": float(np.median(words)), "max": int(words.max())}
    rules.append(f"Write about {int(np.median(words))} words (between {min_words} and {max_words}).")
    bullet_share = sum(bool(BULLET.search(t)) for t in texts) / n
    evidence["bullet_share"] = round(bullet_share, 3)
    no_bullets = bullet_share <= cfg.bullet_share
    rules.append("No bullet points or numbered lists." if no_bullets else "Lists are fine when they help.")
    banned: list[str] = []
    if n >= cfg.min_texts_for_ban:
        used = {m: sum(m in t for t in texts) for m in MARKERS}
        evidence["marker_use"] = used
        banned = [m for m, count in used.items() if count == 0]
        for marker in banned:
            rules.append(f"Never use {marker!r}.")
    greetings = Counter((split_greeting(t)[0] or "").split(" ")[0].rstrip(",").lower() for t in texts)
    word, count = greetings.most_common(1)[0]
    evidence["greeting"] = {k or "(none)": v for k, v in greetings.most_common(4)}
    if word and count / n >= cfg.greeting_share:
        shown = word.capitalize()
        rules.append(f"Open with '{shown} <first name>,' on its own line." if _GREETING.match(word)
                     else "Open with the reader's first name and a comma on its own line.")
    elif greetings.get("", 0) / n >= cfg.greeting_share:
        rules.append("Start directly, without a greeting line.")
    wrapped, multiline = 0, 0
    widths: list[int] = []
    for text in texts:
        for paragraph in re.split(r"\n\s*\n", text):
            lines = [line for line in paragraph.splitlines() if line.strip()]
            if len(lines) >= 3:
                multiline += 1
                body = lines[:-1]
                widths += [len(line) for line in body]
                wrapped += all(40 <= len(line) <= 80 for line in body)
    if multiline and wrapped / multiline >= cfg.wrap_share:
        width = int(np.percentile(widths, 90))
        evidence["wrap_width"] = width
        rules.append(f"Hard-wrap lines at about {width} characters, as an old mail client does.")
    constraints = Constraints(sign_off=sign_off, banned_substrings=banned, min_words=min_words, max_words=max_words,
                              no_bullets=no_bullets, no_placeholders=True)
    return Inference(constraints, rules, evidence)


def describe_style(backend: Any, texts: Sequence[str], name: str, max_texts: int = 5, seed: int = 0) -> str:
    """A short description of how this person writes, by an LLM through any backend (one greedy call)."""
    from personalign.config import SamplingConfig

    shown = "\n\n---\n\n".join(list(texts)[:max_texts])
    conversation = [
        {"role": "system", "content": "You describe writing styles precisely and briefly."},
        {"role": "user", "content": f"Here are texts written by {name}:\n\n{shown}\n\n"
                                    "In at most three sentences, describe how this person writes (tone, length, "
                                    "structure, habits). Reply with the description only."},
    ]
    text = backend.generate([conversation], SamplingConfig(temperature=0.0, max_new_tokens=120, seed=seed))[0][0]
    return " ".join(text.split())


def infer_profile(
    texts: Sequence[SourceText], name: str = "Me", task: str = "write emails", config: InferConfig | None = None,
    style: str | None = None, eval_texts: Sequence[SourceText] = (),
) -> tuple[Profile, Inference]:
    """A profile: every text a demonstration (prompt derived unless given), inferred constraints and rules.

    `eval_texts` become eval prompts with the text as reference (never demonstrations).
    """
    inference = infer_constraints([t.text for t in texts], config)
    demos = [Demonstration(prompt=t.prompt or derive_prompt(t.text, t.subject)[0], output=t.text) for t in texts]
    rules = list(inference.rules) + ([f"Style: {style}"] if style else [])
    # A held-out text whose prompt or text repeats a demonstration's (a resent or forwarded email) would be
    # scored on what the profile trains on: it is left out of the eval prompts, and the evidence says so.
    seen = {normalize(d.prompt) for d in demos} | {normalize(d.output) for d in demos}
    evals: list[EvalPrompt] = []
    for t in eval_texts:
        item = EvalPrompt(prompt=t.prompt or derive_prompt(t.text, t.subject)[0], reference=t.text)
        if normalize(item.prompt) in seen or normalize(t.text) in seen:
            continue
        seen.add(normalize(item.prompt))
        evals.append(item)
    if len(evals) < len(eval_texts):
        inference.evidence["eval_prompts"] = (f"{len(eval_texts) - len(evals)} held-out text(s) left out: same prompt "
                                              "or text as a demonstration or another held-out text")
    profile = Profile(name=name, task=task, demonstrations=demos, rules=rules, constraints=inference.constraints,
                      eval_prompts=evals)
    return profile, inference


# ---- validity ------------------------------------------------------------------------------------------
def validity(
    texts_by_person: dict[str, list[str]], n_infer: int | None = None, config: InferConfig | None = None,
    seed: int = 0, max_others: int = 400,
) -> dict[str, dict[str, Any]]:
    """Per person: infer from a random `n_infer` texts (None = half), then the pass rate of the inferred
    constraints on the person's other (held-out) texts and on other people's texts (at most `max_others`)."""
    rng = random.Random(seed)
    out: dict[str, dict[str, Any]] = {}
    for person, texts in texts_by_person.items():
        order = list(range(len(texts)))
        rng.shuffle(order)
        k = n_infer if n_infer is not None else len(texts) // 2
        if k < 1 or len(texts) - k < 1:
            raise DataError(f"validity: {person} has {len(texts)} texts; needs more than n_infer={k}")
        infer_side = [texts[i] for i in order[:k]]
        heldout = [texts[i] for i in order[k:]]
        others = [t for p, ts in texts_by_person.items() if p != person for t in ts]
        if len(others) > max_others:
            others = rng.sample(others, max_others)
        inference = infer_constraints(infer_side, config)
        own = compliance(heldout, inference.constraints)
        other = compliance(others, inference.constraints)
        out[person] = {"n_infer": k, "n_heldout": len(heldout), "n_others": len(others),
                       "own_pass": own.rate, "others_pass": other.rate,
                       "own_per_check": own.per_check, "others_per_check": other.per_check,
                       "constraints": inference.constraints.model_dump(exclude_defaults=True)}
    return out
