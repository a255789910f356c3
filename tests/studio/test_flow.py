"""The studio's whole loop at toy scale: compare 20 prompts blind, edit a few, retrain with `--feedback`, and see
the retrained run among the candidates of the next round."""

from __future__ import annotations

import re
import shutil

import yaml
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from conftest import REPO, make_tiny_llama
from personalign.config import ModelConfig, SamplingConfig
from personalign.judges.rules import rule_score
from personalign.profiles import load_profile
from personalign.studio.app import Studio, create_app
from personalign.studio.config import StudioConfig
from personalign.studio.sources import build_sources

PROMPTS = REPO / "configs" / "studio" / "prompts.txt"


def studio_for(tmp_path, model, methods, runs) -> tuple[Studio, TestClient]:
    config = StudioConfig(profile=str(tmp_path / "profile.yaml"), db=str(tmp_path / "feedback.sqlite"),
                          prompts=str(PROMPTS), methods=methods, runs=runs, model=model,
                          sampling=SamplingConfig(max_new_tokens=8))
    sources = build_sources(load_profile(config.profile), config.methods, config.runs, config.model)
    studio = Studio(config, sources)
    return studio, TestClient(create_app(studio), follow_redirects=False)


def test_compare_edit_retrain_then_compare_the_new_run(tmp_path, chat_tokenizer, example_profile_path,
                                                       one_torch_thread):
    shutil.copy(example_profile_path, tmp_path / "profile.yaml")
    model_dir = tmp_path / "tiny"
    make_tiny_llama(chat_tokenizer, seed=2).save_pretrained(model_dir)
    chat_tokenizer.save_pretrained(model_dir)
    model = ModelConfig(model=str(model_dir), device="cpu", dtype="fp32")
    studio, client = studio_for(tmp_path, model, ["base", "prompt"], [])
    profile = studio.profile

    for i in range(20):
        page = client.get("/compare").text
        round_id = re.search(r'name="round_id" value="(\w+)"', page).group(1)
        prompt_digest = re.search(r'name="prompt_digest" value="(\w+)"', page).group(1)
        rnd = studio.db.get_round(round_id)
        if i % 7 == 0:  # a few edits: the person writes what they would send
            client.post("/edit", data={"round_id": round_id, "prompt_digest": prompt_digest, "position": "A",
                                       "edited": f"Hi there,\n\nThank you; {rnd.prompt.lower()}\n\nWarmly,\nMaya"})
        scores = {pos: rule_score(c.text, profile.constraints) for pos, c in rnd.shown.items()}
        choice = "tie" if scores["A"] == scores["B"] else max(scores, key=scores.get)
        reply = client.post("/answer", data={"round_id": round_id, "prompt_digest": prompt_digest, "choice": choice})
        assert reply.status_code == 303
    counts = studio.db.counts()
    assert counts["choices"] == 20 and counts["edits"] == 3
    assert len({a["prompt"] for a in studio.db.answers()}) == 20  # 20 different prompts
    studio.close()

    config = tmp_path / "dpo.yaml"
    config.write_text(yaml.safe_dump({"model": model.to_dict(), "method_config": {
        "max_steps": 2, "batch_size": 2, "lora": {"r": 4, "target_modules": ["q_proj", "v_proj"]}}}))
    run = tmp_path / "runs" / "dpo-feedback"
    from personalign.cli.main import app

    result = CliRunner().invoke(app, ["personalize", "--profile", str(tmp_path / "profile.yaml"), "--method", "dpo",
                                      "--feedback", studio.config.db, "--config", str(config), "--out", str(run)])
    assert result.exit_code == 0, result.output
    trained_on = (run / "feedback_pairs.jsonl").read_text().splitlines()
    assert len(trained_on) == 20 - counts["ties"] + 3

    # Next round: the retrained run is one of the two blind candidates, and progress names it.
    studio, client = studio_for(tmp_path, model, ["prompt"], [str(run)])
    page = client.get("/compare").text
    rnd = studio.db.get_round(re.search(r'name="round_id" value="(\w+)"', page).group(1))
    assert {(c.method, c.run) for c in (rnd.x, rnd.y)} == {("prompt", None), ("dpo", str(run))}
    assert rnd.prompt not in {a["prompt"] for a in studio.db.answers()}  # moves on to an unanswered prompt
    studio.close()
