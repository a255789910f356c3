"""Every studio route over HTTP with a tiny model: compare, choose, edit, profile, progress, export, errors."""

from __future__ import annotations

import json
import re

import yaml

from personalign.feedback.db import digest


def hidden(html: str, name: str) -> str:
    match = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert match, f"no hidden field {name}"
    return match.group(1)


def open_round(client, **params):
    page = client.get("/compare", params=params)
    assert page.status_code == 200, page.text
    return page.text, hidden(page.text, "round_id"), hidden(page.text, "prompt_digest")


def test_compare_shows_two_blind_candidates_with_checks(make_studio):
    studio, client = make_studio()
    html, round_id, _ = open_round(client)
    rnd = studio.db.get_round(round_id)
    assert rnd.prompt == studio.profile.eval_prompts[0].prompt and rnd.prompt_source == "eval"
    assert {rnd.x.method, rnd.y.method} == {"base", "prompt"}
    assert "base" not in re.sub(r"<[^>]+>", "", html.split('id="candidate-A"')[1]).split("Edit A")[0].split()
    for check in ("sign_off", "no_bullets", "tell_truncated"):
        assert check in html  # per-check pass/fail of each candidate
    assert client.get("/").headers["location"] == "/compare"
    assert client.get("/static/studio.js").status_code == 200
    assert client.get("/healthz").json()["schema"] == studio.db.version


def test_choice_is_stored_with_order_and_sources(make_studio):
    studio, client = make_studio()
    _, round_id, prompt_digest = open_round(client)
    reply = client.post("/answer", data={"round_id": round_id, "prompt_digest": prompt_digest, "choice": "B",
                                         "reason": "warmer", "elapsed_ms": "2300"})
    assert reply.status_code == 303 and "saved=choice" in reply.headers["location"]
    (row,) = studio.db.answers()
    rnd = studio.db.get_round(round_id)
    assert row["shown_choice"] == "B" and row["winner"] == rnd.slot("B") and row["reason"] == "warmer"
    assert row["elapsed_ms"] == 2300 and row["profile_version"] == studio.profile_version
    # The next round moves on to the next unanswered prompt.
    _, second, _ = open_round(client)
    assert studio.db.get_round(second).prompt == studio.profile.eval_prompts[1].prompt


def test_typed_prompt_and_bad_answers_store_nothing(make_studio):
    studio, client = make_studio(max_text_chars=200)
    _, round_id, prompt_digest = open_round(client, prompt="Thank Sam for the intro.")
    assert studio.db.get_round(round_id).prompt_source == "typed"
    assert client.get("/compare", params={"prompt": "x" * 201}).status_code == 413
    stale = client.post("/answer", data={"round_id": round_id, "prompt_digest": digest("other"), "choice": "A"})
    assert stale.status_code == 409 and "prompt changed" in stale.text
    missing = client.post("/answer", data={"round_id": "f" * 32, "prompt_digest": prompt_digest, "choice": "A"})
    assert missing.status_code == 409
    bad = client.post("/answer", data={"round_id": round_id, "prompt_digest": prompt_digest, "choice": "C"})
    assert bad.status_code == 400 and "field &#39;choice&#39;" in bad.text
    assert studio.db.counts()["choices"] == 0
    ok = client.post("/answer", data={"round_id": round_id, "prompt_digest": prompt_digest, "choice": "A"})
    assert ok.status_code == 303
    twice = client.post("/answer", data={"round_id": round_id, "prompt_digest": prompt_digest, "choice": "B"})
    assert twice.status_code == 409 and "already answered" in twice.text
    assert [r["shown_choice"] for r in studio.db.answers()] == ["A"]


def test_edit_becomes_demonstration_and_pair(make_studio):
    studio, client = make_studio(max_text_chars=300)
    _, round_id, prompt_digest = open_round(client, prompt="Thank Sam for the intro.")
    form = client.get("/edit", params={"round": round_id, "position": "A"})
    original = studio.db.get_round(round_id).shown["A"].text
    assert form.status_code == 200 and "Save edit" in form.text
    base = {"round_id": round_id, "prompt_digest": prompt_digest, "position": "A"}
    empty = client.post("/edit", data={**base, "edited": "   "})
    assert empty.status_code == 400 and 'id="error-edited"' in empty.text and "is empty" in empty.text
    big = client.post("/edit", data={**base, "edited": "y" * 301})
    assert big.status_code == 413 and "y" * 301 in big.text  # the person's text is kept in the form
    stale = client.post("/edit", data={**base, "prompt_digest": digest("x"), "edited": "Hi Sam"})
    assert stale.status_code == 409
    text = "Hi Sam, thank you so much for the intro.\n\nWarmly,\nMaya"
    saved = client.post("/edit", data={**base, "edited": text})
    assert saved.status_code == 303 and f"round={round_id}" in saved.headers["location"]
    (edit,) = studio.db.edits()
    assert (edit["edited"], edit["original"], edit["prompt"]) == (text, original, "Thank Sam for the intro.")
    back = client.get(saved.headers["location"])
    assert back.status_code == 200 and "Saved your edit" in back.text
    pairs = [json.loads(line) for line in client.get("/export/pairs").text.splitlines()]
    assert pairs == [pairs[0]] and pairs[0]["chosen"] == text and pairs[0]["rejected"] == original
    demos = [json.loads(line) for line in client.get("/export/demonstrations").text.splitlines()]
    assert [(d["prompt"], d["output"]) for d in demos] == [("Thank Sam for the intro.", text)]
    assert client.get("/export/nope").status_code == 400
    assert client.get("/edit", params={"round": "nope"}).status_code == 409


def profile_form(html: str) -> dict[str, str]:
    form: dict[str, str] = {}
    for name, value in re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', html):
        form[name] = value
    for name, value in re.findall(r'<input name="([^"]+)" id="[^"]+" value="([^"]*)"', html):
        form[name] = value
    for name, value in re.findall(r'<textarea name="([^"]+)" id="[^"]+" rows="\d+">(.*?)</textarea>', html, re.S):
        form[name] = value.replace("&#39;", "'").replace("&#34;", '"').replace("&amp;", "&")
    for name in re.findall(r'<input type="checkbox" name="([^"]+)" id="[^"]+" value="1" checked>', html):
        form[name] = "1"
    return form


def test_profile_edit_validates_like_the_cli_and_saves(make_studio, studio_profile):
    studio, client = make_studio()
    page = client.get("/profile")
    assert page.status_code == 200
    form = profile_form(page.text)
    assert form["demo_count"] == "5" and form["min_words"] == "50" and "no_bullets" in form
    bad = client.post("/profile", data={**form, "min_words": "200", "max_words": "lots", "demo_1_output": ""})
    assert bad.status_code == 400
    assert re.search(r'data-field="constraints.max_words" role="alert">field &#39;constraints.max_words&#39;',
                     bad.text)
    assert 'data-field="demonstrations.1.output"' in bad.text
    assert yaml.safe_load(studio_profile.read_text())["constraints"]["min_words"] == 50  # nothing written
    old_version = studio.profile_version
    saved = client.post("/profile", data={**form, "rules": "Be warm.\nBe brief.", "demo_4_delete": "1",
                                          "demo_new_prompt": "Greet Al.", "demo_new_output": "Hi Al!\n\nWarmly,\nMaya"})
    assert saved.status_code == 303
    data = yaml.safe_load(studio_profile.read_text())
    assert data["rules"] == ["Be warm.", "Be brief."] and len(data["demonstrations"]) == 5
    assert data["demonstrations"][-1] == {"prompt": "Greet Al.", "output": "Hi Al!\n\nWarmly,\nMaya"}
    assert len(data["eval_prompts"]) == 14 and data["constraints"]["sign_off"] == "Warmly,\nMaya"
    assert studio.profile_version != old_version and studio.profile.rules == ["Be warm.", "Be brief."]
    # The form from before the save is stale now: it would overwrite the newer file.
    stale = client.post("/profile", data=form)
    assert stale.status_code == 409 and yaml.safe_load(studio_profile.read_text())["rules"] == ["Be warm.", "Be brief."]


def test_progress_shows_win_rates_and_retrain_commands(make_studio):
    studio, client = make_studio()
    for _ in range(3):
        _, round_id, prompt_digest = open_round(client)
        rnd = studio.db.get_round(round_id)
        prompt_pos = "A" if rnd.shown["A"].method == "prompt" else "B"
        client.post("/answer", data={"round_id": round_id, "prompt_digest": prompt_digest, "choice": prompt_pos})
    page = client.get("/progress")
    assert page.status_code == 200
    rows = dict(re.findall(r"<tr><td>([\w-]+)</td><td>(\d+%)</td>", page.text))
    assert rows == {"base": "0%", "prompt": "100%"}
    assert "--method dpo --feedback" in page.text and "--method ditto --feedback" in page.text
    assert "3 answers on evaluation prompts held out" in page.text


def test_token_required_off_loopback(make_studio):
    _, client = make_studio(token="s3cret")
    assert client.get("/compare").status_code == 401
    assert client.get("/healthz", headers={"authorization": "Bearer s3cret"}).status_code == 200
    first = client.get("/progress", params={"token": "s3cret"})
    assert first.status_code == 200 and client.get("/progress").status_code == 200  # cookie set


def test_overload_is_shed_with_429(make_studio):
    import threading

    studio, client = make_studio(max_waiting=1)
    studio._generate_lock.acquire()  # a generation is running
    waiting = threading.Thread(target=lambda: client.get("/compare"))
    try:
        waiting.start()
        while studio._waiting < 1:
            pass
        busy = client.get("/compare")
        assert busy.status_code == 429 and busy.headers["retry-after"] == "1" and "busy" in busy.text
    finally:
        studio._generate_lock.release()
        waiting.join()
    assert client.get("/compare").status_code == 200


def test_next_pair_is_prepared_while_the_person_reads(make_studio):
    studio, client = make_studio()
    _, first, _ = open_round(client)
    assert studio._prefetched is not None  # the next list prompt is being generated in the background
    prepared = studio._prefetched.result()
    _, second, _ = open_round(client)
    rnd = studio.db.get_round(second)
    assert (rnd.prompt, rnd.x, rnd.y) == (prepared[0], prepared[2], prepared[3])
    assert rnd.prompt != studio.db.get_round(first).prompt
    # A profile edit makes a prepared pair stale: the next round is generated under the new profile.
    studio.profile_version = studio.db.profile_version(studio.profile.model_copy(update={"rules": ["Be brief."]}))
    _, third, _ = open_round(client)
    assert studio.db.get_round(third).profile_version == studio.profile_version
