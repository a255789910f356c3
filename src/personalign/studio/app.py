"""The studio's FastAPI app: blind compare, edit, profile editing, progress and export, rendered on the server.

Pages are Jinja2 templates with a little JavaScript (keys 1/2/0, time-to-answer), all shipped in the package,
so the studio works offline. Every answer is one database transaction; a POST that fails stores nothing and
answers with a page saying why (400 bad input, 409 stale form, 413 too large, 429 busy).
"""

from __future__ import annotations

import hmac
import json
import random
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import yaml
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, PackageLoader, select_autoescape
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from personalign.errors import PersonalignError
from personalign.feedback.db import Candidate, FeedbackDB, FeedbackError, Round, StaleFormError, check_field, digest
from personalign.feedback.export import FORMATS, export
from personalign.feedback.stats import label, method_winrates, position_bias
from personalign.io import atomic_write_yaml, read_text
from personalign.judges.rules import check_tells, check_text
from personalign.profiles.loading import field_problems, load_profile
from personalign.profiles.schema import Profile
from personalign.studio.config import StudioConfig
from personalign.studio.sources import Source

STATIC = Path(__file__).parent / "static"
TOKEN_COOKIE = "personalign_studio_token"


class Busy(FeedbackError):
    status = 429


class Studio:
    """What the app serves: the config, the profile file, the feedback DB and the candidate sources."""

    def __init__(self, config: StudioConfig, sources: list[Source], db: FeedbackDB | None = None):
        if not sources:
            raise PersonalignError("no candidate sources; pass --methods and/or --runs")
        self.config = config
        self.profile_path = Path(config.profile)
        self.profile = load_profile(self.profile_path)
        self.db = db if db is not None else FeedbackDB(config.db)
        self.sources = sources
        self.profile_version = self.db.profile_version(self.profile)
        self.file_prompts = _read_prompts(config.prompts) if config.prompts else []
        self._rng = random.Random(config.seed)
        self._rng_lock = threading.Lock()
        self._generate_lock = threading.Lock()  # one generation at a time: backends are not thread-safe
        self._waiting = 0
        self._waiting_lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="studio-prefetch")
        self._prefetched: Future[tuple[str, str, Candidate, Candidate, str, int]] | None = None
        self._prefetch_lock = threading.Lock()

    # ---- prompts and rounds ------------------------------------------------------------------------
    def pool(self) -> list[tuple[str, str]]:
        if self.file_prompts:
            return [(p, "file") for p in self.file_prompts]
        return [(p.prompt, "eval") for p in self.profile.eval_prompts]

    def next_prompt(self, skip: frozenset[str] = frozenset()) -> tuple[str, str]:
        """The pool prompt answered least often so far (pool order breaks ties), avoiding `skip` when it can."""
        pool = self.pool()
        if not pool:
            raise FeedbackError("no prompts to compare on: the profile has no eval_prompts and no --prompts file; "
                                "type a prompt above")
        answered: dict[str, int] = {}
        for row in self.db.answers():
            answered[row["prompt"]] = answered.get(row["prompt"], 0) + 1
        candidates = [item for item in pool if item[0] not in skip] or pool
        return min(candidates, key=lambda item: answered.get(item[0], 0))

    def _draw(self) -> tuple[Source, Source, int, int, str]:
        with self._rng_lock:
            if len(self.sources) >= 2:
                first, second = self._rng.sample(self.sources, 2)
            else:  # one source: two samples of it with different seeds
                first = second = self.sources[0]
            seeds = self._rng.sample(range(1, 2**31), 2)
            return first, second, seeds[0], seeds[1], self._rng.choice(["xy", "yx"])

    @contextmanager
    def generation_slot(self) -> Iterator[None]:
        with self._waiting_lock:
            if self._waiting >= self.config.max_waiting:
                raise Busy(f"the studio is busy generating ({self._waiting} requests waiting); try again shortly")
            self._waiting += 1
        try:
            with self._generate_lock:
                yield
        finally:
            with self._waiting_lock:
                self._waiting -= 1

    def _generate(self, prompt: str, source: str) -> tuple[str, str, Candidate, Candidate, str, int]:
        """Two candidates (called under the generation lock, so the profile and its version cannot change)."""
        version = self.profile_version
        first, second, seed_x, seed_y, order = self._draw()
        x = first.generate(prompt, self.config.sampling, seed_x)
        y = second.generate(prompt, self.config.sampling, seed_y)
        return prompt, source, x, y, order, version

    def _prefetch_after(self, shown: str) -> None:
        """Generate the next list prompt's pair in the background while the person reads this one: on a CPU a
        pair takes seconds to minutes, and the person should not wait for it after every answer."""
        with self._prefetch_lock:
            if self._prefetched is None and self.pool():
                prompt, source = self.next_prompt(skip=frozenset([shown]))

                def run() -> tuple[str, str, Candidate, Candidate, str, int]:
                    with self._generate_lock:
                        return self._generate(prompt, source)

                self._prefetched = self._executor.submit(run)

    def _take_prefetched(self) -> tuple[str, str, Candidate, Candidate, str, int] | None:
        with self._prefetch_lock:
            future, self._prefetched = self._prefetched, None
        if future is None:
            return None
        try:
            made = future.result()
        except Exception:
            return None  # generate afresh below; a real problem shows up there with its message
        return made if made[5] == self.profile_version else None  # made before a profile edit: stale

    def new_round(self, typed: str | None) -> Round:
        made = None
        if typed is not None and typed.strip():
            prompt, source = check_field(typed.strip(), "prompt", self.config.max_text_chars), "typed"
        else:
            made = self._take_prefetched()
            prompt, source = made[:2] if made else self.next_prompt()
        if made is None:
            with self.generation_slot():
                made = self._generate(prompt, source)
        prompt, source, x, y, order, version = made
        rnd = self.db.add_round(prompt, source, x, y, order, version)
        if source != "typed":
            self._prefetch_after(prompt)
        return rnd

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    def checks(self, text: str) -> list[Any]:
        return [*check_text(text, self.profile.constraints), *check_tells(text)]

    # ---- profile -----------------------------------------------------------------------------------
    def profile_file_digest(self) -> str:
        return digest(read_text(self.profile_path))

    def save_profile(self, data: dict[str, Any], seen_digest: str) -> Profile:
        """Validate like the CLI, refuse when the file changed since the form was shown, then write atomically."""
        if seen_digest != self.profile_file_digest():
            raise StaleFormError(f"{self.profile_path} changed on disk since this form was opened; nothing was "
                                 "saved; reload the profile page")
        profile = Profile.model_validate(data)  # ValidationError → per-field messages in the page
        atomic_write_yaml(self.profile_path, profile.model_dump(mode="json", exclude_defaults=True))
        version = self.db.profile_version(profile)
        with self._generate_lock:  # profile, version and prompt builders change together, between generations
            self.profile, self.profile_version = profile, version
            for source in self.sources:
                source.refit(profile)
        return profile


def _read_prompts(path: str) -> list[str]:
    prompts = [line.strip() for line in read_text(path).splitlines() if line.strip() and not line.startswith("#")]
    if not prompts:
        raise PersonalignError(f"{path}: no prompts; write one prompt per line")
    return prompts


# ---- profile form ↔ profile fields --------------------------------------------------------------------
def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _optional(value: str) -> str | None:
    return value.strip() or None


def profile_from_form(form: dict[str, str], base: Profile) -> dict[str, Any]:
    """The submitted demonstrations, rules and constraints over the rest of the current profile (name, task,
    rubric and eval prompts are not edited here and are kept as they are)."""
    data = base.model_dump(mode="json")
    demos = []
    count = int(form.get("demo_count", "0") or 0)
    for i in range(count):
        if form.get(f"demo_{i}_delete"):
            continue
        demos.append({"prompt": form.get(f"demo_{i}_prompt", ""), "output": form.get(f"demo_{i}_output", "")})
    new_prompt, new_output = form.get("demo_new_prompt", ""), form.get("demo_new_output", "")
    if new_prompt.strip() or new_output.strip():
        demos.append({"prompt": new_prompt, "output": new_output})
    for demo in demos:
        demo["prompt"] = demo["prompt"].strip()
        demo["output"] = demo["output"].replace("\r\n", "\n").strip()
    data["demonstrations"] = demos
    data["rules"] = _lines(form.get("rules", ""))
    sign_off = form.get("sign_off", "").replace("\r\n", "\n").strip()
    data["constraints"] = {
        "sign_off": sign_off or None,
        "banned_substrings": _lines(form.get("banned_substrings", "")),
        "min_words": _optional(form.get("min_words", "")),
        "max_words": _optional(form.get("max_words", "")),
        "no_bullets": bool(form.get("no_bullets")),
        "no_placeholders": bool(form.get("no_placeholders")),
        "single_paragraph_max_sentences": _optional(form.get("single_paragraph_max_sentences", "")),
    }
    return data


# ---- the app ------------------------------------------------------------------------------------------
def create_app(studio: Studio) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> Any:
        yield
        studio.close()  # finish (or cancel) a background generation before the process exits

    app = FastAPI(title="personalign studio", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    env = Environment(loader=PackageLoader("personalign.studio", "templates"), autoescape=select_autoescape())
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    config = studio.config

    def page(name: str, status: int = 200, **context: Any) -> HTMLResponse:
        html = env.get_template(name).render(profile=studio.profile, page=name.split(".")[0], **context)
        return HTMLResponse(html, status_code=status)

    def error_page(exc: PersonalignError, back: str) -> HTMLResponse:
        status = getattr(exc, "status", 400)
        response = page("error.html", status=status, message=str(exc), back=back)
        if status == 429:
            response.headers["retry-after"] = "1"  # as `serve` sheds overload: come back in a second
        return response

    if config.token:
        token = config.token

        @app.middleware("http")
        async def require_token(request: Request, call_next: Callable[..., Any]) -> Response:
            given = (request.headers.get("authorization", "").removeprefix("Bearer ").strip()
                     or request.cookies.get(TOKEN_COOKIE) or request.query_params.get("token") or "")
            if not hmac.compare_digest(given.encode(), token.encode()):
                return HTMLResponse("<h1>401</h1><p>This studio needs its access token: open the URL printed when "
                                    "it started (…/?token=...).</p>", status_code=401)
            response: Response = await call_next(request)
            if request.query_params.get("token"):
                response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
            return response

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "schema": studio.db.version, "counts": studio.db.counts()}

    @app.get("/")
    def root() -> RedirectResponse:
        return RedirectResponse("/compare", status_code=303)

    @app.get("/compare", response_class=HTMLResponse)
    def compare(prompt: str | None = None, round: str | None = None, saved: str | None = None) -> HTMLResponse:
        try:
            if round:
                rnd = studio.db.get_round(round)
                if rnd is None:
                    raise StaleFormError("this comparison is not in the database; open Compare again")
            else:
                rnd = studio.new_round(prompt)
        except PersonalignError as exc:
            return error_page(exc, "/compare")
        answered = studio.db.choice_for(rnd.id)
        shown = {pos: {"text": c.text, "checks": studio.checks(c.text)} for pos, c in rnd.shown.items()}
        return page("compare.html", round=rnd, shown=shown, prompt_digest=digest(rnd.prompt), saved=saved,
                    answered=answered, counts=studio.db.counts(), max_chars=config.max_text_chars)

    @app.post("/answer")
    async def answer(request: Request) -> Response:
        form = {k: str(v) for k, v in (await request.form()).items()}
        elapsed = form.get("elapsed_ms", "")
        try:
            await run_in_threadpool(
                studio.db.record_choice, form.get("round_id", ""), form.get("prompt_digest", ""),
                form.get("choice", ""), studio.profile_version, form.get("reason", ""),
                int(elapsed) if elapsed.isdigit() else None)
        except PersonalignError as exc:
            return error_page(exc, "/compare")
        return RedirectResponse("/compare?saved=choice", status_code=303)

    @app.get("/edit", response_class=HTMLResponse)
    def edit_form(round: str = "", position: str = "A") -> HTMLResponse:
        rnd = studio.db.get_round(round)
        if rnd is None or position not in ("A", "B"):
            return error_page(StaleFormError("this comparison is not in the database; open Compare again"),
                              "/compare")
        return page("edit.html", round=rnd, position=position, text=rnd.shown[position].text, error=None,
                    prompt_digest=digest(rnd.prompt), max_chars=config.max_text_chars)

    @app.post("/edit")
    async def edit(request: Request) -> Response:
        form = {k: str(v) for k, v in (await request.form()).items()}
        round_id, position = form.get("round_id", ""), form.get("position", "")
        text = form.get("edited", "").replace("\r\n", "\n")
        try:
            if len(text) > config.max_text_chars:
                check_field(text, "edited", config.max_text_chars)
            await run_in_threadpool(studio.db.record_edit, round_id, form.get("prompt_digest", ""), position, text,
                                    studio.profile_version)
        except StaleFormError as exc:
            return error_page(exc, "/compare")
        except FeedbackError as exc:
            rnd = studio.db.get_round(round_id)
            if rnd is None or position not in ("A", "B"):
                return error_page(exc, "/compare")
            # Re-show the form with the person's text kept and the error beside the field.
            return page("edit.html", status=exc.status, round=rnd, position=position, text=text, error=str(exc),
                        prompt_digest=form.get("prompt_digest", ""), max_chars=config.max_text_chars)
        return RedirectResponse(f"/compare?round={round_id}&saved=edit", status_code=303)

    def profile_page(data: dict[str, Any], errors: dict[str, list[str]], status: int = 200,
                     saved: bool = False, summary: str = "") -> HTMLResponse:
        return page("profile_edit.html", status=status, data=data, errors=errors, saved=saved, summary=summary,
                    file_digest=studio.profile_file_digest(), path=str(studio.profile_path))

    @app.get("/profile", response_class=HTMLResponse)
    def profile_view(saved: str | None = None) -> HTMLResponse:
        return profile_page(studio.profile.model_dump(mode="json"), {}, saved=bool(saved))

    @app.post("/profile")
    async def profile_save(request: Request) -> Response:
        form = {k: str(v) for k, v in (await request.form()).items()}
        data = profile_from_form(form, studio.profile)
        try:
            await run_in_threadpool(studio.save_profile, data, form.get("file_digest", ""))
        except ValidationError as exc:
            problems = field_problems(exc)
            errors: dict[str, list[str]] = {}
            for loc, message in problems:
                errors.setdefault(loc, []).append(message)
            summary = f"{studio.profile_path}: " + "; ".join(m for _, m in problems)
            return profile_page(data, errors, status=400, summary=summary)
        except StaleFormError as exc:
            return error_page(exc, "/profile")
        return RedirectResponse("/profile?saved=1", status_code=303)

    @app.get("/progress", response_class=HTMLResponse)
    def progress() -> HTMLResponse:
        answers = studio.db.answers()
        rates = method_winrates(answers, seed=config.seed)
        left, decided = position_bias(answers)
        pairs = export(studio.db, "pairs", studio.profile)
        demos = export(studio.db, "demonstrations", studio.profile)
        db = config.db
        commands = [
            f"personalign personalize --profile {config.profile} --method dpo --feedback {db}",
            f"personalign personalize --profile {config.profile} --method ditto --feedback {db}",
        ]
        return page("progress.html", counts=studio.db.counts(), rates=rates, left=left, decided=decided,
                    pairs=pairs, demos=demos, commands=commands,
                    sources=[label(s.method, s.run) for s in studio.sources])

    @app.get("/export/{fmt}")
    def export_rows(fmt: str, include_eval: bool = False) -> Response:
        name = fmt.removesuffix(".jsonl")
        if name not in FORMATS:
            return error_page(FeedbackError(f"unknown export {fmt!r}; use /export/pairs or /export/demonstrations"),
                              "/progress")
        rows = export(studio.db, name, studio.profile, include_eval).rows
        body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        return Response(body, media_type="application/jsonl",
                        headers={"content-disposition": f'attachment; filename="feedback-{name}.jsonl"'})

    @app.get("/profile.yaml")
    def profile_yaml() -> Response:
        return Response(yaml.safe_dump(studio.profile.model_dump(mode="json"), sort_keys=False, allow_unicode=True),
                        media_type="text/yaml")

    return app
