"""gen-rm, the generative judge: scoring by hand, position bias, training on a toy rule, the held-out split,
loading, the RLAIF reward term, its contamination map and `judge validate` / `reward train --kind gen-rm`."""

from __future__ import annotations

import json
import math
import random
from concurrent.futures import Future

import pytest
import torch
from typer.testing import CliRunner

from conftest import make_tiny_llama
from personalign.cli.main import app
from personalign.engines.base import CrossEntropy, Datum, LoraSettings, SamplingClient, TokenLogprobs, resolved
from personalign.judges.generative import (
    GEN_RM_FILE,
    HELDOUT_FILE,
    ComparisonRenderer,
    GenerativeJudge,
    _label_nll,
    both_orders,
    first_wins,
    label_loss,
    train_generative_judge,
)
from personalign.judges.labeled_sets import LabeledPair, load_labeled
from personalign.judges.reward_model import RewardModelConfig
from personalign.judges.validate import agreement_metrics
from personalign.runs import RunDir
from personalign.splits import fingerprint, read_training_data

RUBRIC = "Thanks beat placeholders."
TOPICS = ["meeting", "report", "lunch", "project", "deadline", "budget", "trip", "slides", "launch", "hiring",
          "review", "offsite"]


def toy_pairs(repeats: int = 2, seed: int = 0) -> list[LabeledPair]:
    """The learnable rule: the answer that thanks beats the one with a placeholder; the slot is a coin flip."""
    rng = random.Random(seed)
    pairs = []
    for i, topic in enumerate(TOPICS * repeats):
        good, bad = f"thanks, the {topic} is done", f"[your name] {topic} here"
        first_good = rng.random() < 0.5
        pairs.append(LabeledPair(f"note {i} on the {topic}", good if first_good else bad, bad if first_good else good,
                                 "A" if first_good else "B"))
    return pairs


class LabelClient(SamplingClient):
    """A hand-made scoring client: log p(label token) from a function of (prompt text, label). A protocol-shape
    stand-in for the hand-computed cases only; the real engine is trained and scored below."""

    def __init__(self, tokenizer, logp):
        self.tokenizer = tokenizer
        self.logp = logp

    def sample(self, prompts, sampling, progress=False) -> Future:
        raise AssertionError("scoring never samples")

    def compute_logprobs(self, data: list[Datum]) -> Future[TokenLogprobs]:
        values = [[self.logp(self.tokenizer.decode(d.prompt), self.tokenizer.decode(d.completion))] for d in data]
        return resolved(TokenLogprobs(torch.tensor(values), torch.ones((len(data), 1), dtype=torch.bool)))


def test_scoring_by_hand():
    assert first_wins(math.log(0.75), math.log(0.25)) == pytest.approx(0.75)
    assert first_wins(math.log(0.3), math.log(0.1)) == pytest.approx(0.75)  # renormalized over {A, B}
    # shown (a, b): a wins with 0.8; shown (b, a): b (first) wins with 0.3, so a with 0.7 → mean 0.75
    assert both_orders(0.8, 0.3) == pytest.approx(0.75)


def test_always_a_judge_scores_one_half_and_is_position_biased(chat_tokenizer):
    renderer = ComparisonRenderer(chat_tokenizer)
    always_a = GenerativeJudge(LabelClient(chat_tokenizer, lambda prompt, label: math.log(0.9 if label == "A" else
                                                                                         0.1)), renderer, RUBRIC)
    pairs = toy_pairs(1)[:6]
    prefs = always_a.preferences([p.prompt for p in pairs], [p.a for p in pairs], [p.b for p in pairs])
    assert [pref.p for pref in prefs] == pytest.approx([0.5] * 6)  # no information, whatever the labels
    assert all(pref.p_forward == pytest.approx(0.9) and pref.p_backward == pytest.approx(0.9) for pref in prefs)
    verdicts = always_a.compare_many([p.prompt for p in pairs], [p.a for p in pairs], [p.b for p in pairs])
    assert [v.winner for v in verdicts] == ["tie"] * 6 and all(v.orders == ["A", "B"] for v in verdicts)
    metrics = agreement_metrics([p.label for p in pairs], verdicts)
    assert metrics["position_bias_rate"] == 1.0 and metrics["accuracy"] == 0.0


def test_a_content_judge_agrees_in_both_orders(chat_tokenizer):
    renderer = ComparisonRenderer(chat_tokenizer)

    def logp(prompt: str, label: str) -> float:  # reads which slot holds the thanking answer
        first = prompt.split("###Response A:")[1].split("###Response B:")[0]
        return math.log(0.8 if ("thanks" in first) == (label == "A") else 0.2)

    judge = GenerativeJudge(LabelClient(chat_tokenizer, logp), renderer, RUBRIC)
    pairs = toy_pairs(1)
    prefs = judge.preferences([p.prompt for p in pairs], [p.a for p in pairs], [p.b for p in pairs])
    assert [pref.p for pref in prefs] == pytest.approx([0.8 if p.label == "A" else 0.2 for p in pairs])
    metrics = agreement_metrics([p.label for p in pairs], [pref.verdict() for pref in prefs])
    assert metrics["accuracy"] == 1.0 and metrics["position_bias_rate"] == 0.0


def test_training_sequences_are_both_orders_with_the_label_token_only(chat_tokenizer):
    renderer = ComparisonRenderer(chat_tokenizer)
    pair = LabeledPair("q", "thanks", "[your name]", "A")
    forward, backward = renderer.training_datums(pair, RUBRIC)
    a_id, b_id = renderer.label_ids
    assert (forward.completion, backward.completion) == ([a_id], [b_id])
    assert chat_tokenizer.decode([a_id]) == "A" and chat_tokenizer.decode([b_id]) == "B"
    text = chat_tokenizer.decode(backward.prompt)
    assert text.index("[your name]") < text.index("###Response B:") < text.index("thanks")  # swapped slots
    assert RUBRIC in text


def test_the_label_loss_equals_cross_entropy_on_one_token(tiny_backend):
    from personalign.engines.local import LocalEngine

    engine = LocalEngine(tiny_backend, LoraSettings(dropout=0.0))
    renderer = ComparisonRenderer(tiny_backend.tokenizer)
    data = [d for p in toy_pairs(1)[:3] for d in renderer.training_datums(p, RUBRIC)]
    assert label_loss(engine).name == "label_nll"
    custom = engine.forward(data, label_loss(engine)).result().loss
    assert custom == pytest.approx(engine.forward(data, CrossEntropy()).result().loss, abs=1e-5)
    assert _label_nll is label_loss(engine).fn


def test_micro_batches_accumulate_to_the_one_pass_step(chat_tokenizer):
    """A batch of 6 sequences in micro-batches of 4 + 2: the same loss, metrics and
    updated weights as one pass (a micro-batch loss divided by its own size instead of the batch's would
    weight the 2-sequence chunk double and fail here)."""
    from personalign.backends.hf import HFBackend
    from personalign.config import ModelConfig
    from personalign.engines.local import LocalEngine
    from personalign.judges.generative import train_step
    from personalign.methods.training import TrainConfig, TrainingSession

    renderer = ComparisonRenderer(chat_tokenizer)
    batch = [d for p in toy_pairs(1)[:3] for d in renderer.training_datums(p, RUBRIC)]
    results = []
    for micro in (len(batch), 4):
        torch.manual_seed(0)
        backend = HFBackend(ModelConfig(device="cpu", dtype="fp32"), model=make_tiny_llama(chat_tokenizer, seed=5),
                            tokenizer=chat_tokenizer)
        engine = LocalEngine(backend, LoraSettings(enabled=False))
        session = TrainingSession(engine, TrainConfig(lr=1e-2, max_steps=1), None)
        out = train_step(session, batch, label_loss(engine), micro)
        weights = torch.cat([p.detach().flatten() for p in engine.params])
        results.append((out, weights))
    (whole, w_whole), (micro, w_micro) = results
    assert len(batch) == 6 and micro.loss == pytest.approx(whole.loss, abs=1e-6)
    assert micro.metrics["label_accuracy"] == pytest.approx(whole.metrics["label_accuracy"])
    assert micro.metrics["grad_norm"] == pytest.approx(whole.metrics["grad_norm"], rel=1e-5)
    assert torch.allclose(w_micro, w_whole, atol=1e-6)
    assert not torch.allclose(w_whole, torch.cat([p.detach().flatten() for p in
                                                  make_tiny_llama(chat_tokenizer, seed=5).parameters()]))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, chat_tokenizer):
    """A tiny llama trained as gen-rm on the toy rule (full fine-tuning: LoRA on a random 32-wide model is slow
    to learn), saved as a run dir whose backbone is the tiny model's folder."""
    from personalign.backends.hf import HFBackend
    from personalign.config import ModelConfig
    from personalign.engines.local import LocalEngine

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("gen-rm")
    base = root / "tiny"
    make_tiny_llama(chat_tokenizer).save_pretrained(base)
    chat_tokenizer.save_pretrained(base)
    backend = HFBackend(ModelConfig(model=str(base), device="cpu", dtype="fp32"))
    engine = LocalEngine(backend, LoraSettings(enabled=False))
    config = RewardModelConfig(kind="gen-rm", backbone=str(base), lora=False, learning_rate=1e-2, max_steps=60,
                               batch_size=4, eval_every=20, save_every=30, heldout_fraction=0.25, device="cpu")
    pairs = toy_pairs(2)
    run = RunDir(root / "run")
    judge, summary = train_generative_judge(pairs, config, run, rubric=RUBRIC, progress=False, engine=engine,
                                            tokenizer=chat_tokenizer)
    return {"judge": judge, "summary": summary, "run": run.path, "pairs": pairs, "config": config}


def test_training_learns_the_rule_on_held_out_prompts(trained):
    summary = trained["summary"]
    # a random model knows nothing (≈ ½ for the labeled winner, each order's verdict set by position) ...
    assert abs(summary["heldout_p_chosen_before"] - 0.5) < 0.05 and summary["heldout_position_bias_before"] == 1.0
    # ... the trained one gives the labeled winner most of the probability, in both orders
    assert summary["heldout_p_chosen"] > 0.8 and summary["heldout_accuracy"] == 1.0
    assert summary["heldout_position_bias"] <= 0.34
    assert summary["steps"] == 60 and summary["train_sequences"] == 2 * summary["train_pairs"]


def test_held_out_pairs_are_split_by_prompt_and_never_trained_on(trained):
    run, pairs = trained["run"], trained["pairs"]
    held = load_labeled(str(run / HELDOUT_FILE))
    assert len(held) == trained["summary"]["heldout_pairs"] > 0 and all(p.rubric is None for p in held)
    recorded = read_training_data(run)
    assert recorded is not None and not any(fingerprint(p.prompt) in recorded.prompts for p in held)
    assert len(recorded.prompts) + len({p.prompt for p in held}) == len({p.prompt for p in pairs})


def test_a_saved_judge_reloads_with_the_same_probabilities(trained):
    run = trained["run"]
    manifest = json.loads((run / GEN_RM_FILE).read_text())
    assert manifest["weights"] == {"model": str((run / "model").resolve())} and manifest["rubric"] == RUBRIC
    loaded = GenerativeJudge.load(run, device="cpu")
    pairs = toy_pairs(1, seed=5)[:4]
    args = ([p.prompt for p in pairs], [p.a for p in pairs], [p.b for p in pairs])
    assert [x.p for x in loaded.preferences(*args)] == pytest.approx([x.p for x in trained["judge"].preferences(*args)],
                                                                     abs=1e-5)
    with pytest.raises(Exception, match="pairwise judge"):
        loaded.score_many(["q"], ["a"])


def test_gen_rm_reward_term_is_the_win_probability_against_the_reference(trained, example_profile_path):
    from personalign.backends.base import GenerationBackend
    from personalign.methods.rlaif import RewardMix, RewardTerm, RLAIFMethod, parse_reward_spec
    from personalign.profiles import load_profile

    run = str(trained["run"])
    assert parse_reward_spec(f"gen-rm:{run}:0.5,rules:1") == [RewardTerm("gen-rm", 0.5, run), RewardTerm("rules", 1.0)]
    with pytest.raises(Exception, match="gen-rm needs its run dir"):
        parse_reward_spec("gen-rm:")

    class Reference(GenerationBackend):
        name = "reference"

        def generate(self, conversations, sampling, progress=False):
            return [["[your name] here"] for _ in conversations]

        def logprobs(self, conversations, completions):
            raise NotImplementedError

    profile = load_profile(example_profile_path)
    mix = RewardMix([RewardTerm("gen-rm", 1.0, run)], profile, Reference(),
                    lambda p: [{"role": "user", "content": p}])
    mix._gen_rms[run] = trained["judge"]  # the trained judge itself (loading is tested above)
    prompts, texts = ["note on the trip", "note on the trip"], ["thanks, the trip is done", "[your name] trip"]
    total, parts = mix(prompts, texts)
    expected = [p.p for p in trained["judge"].preferences(prompts, texts, ["[your name] here"] * 2, profile)]
    assert total == pytest.approx(expected) and parts["reward_gen-rm"] == pytest.approx(expected)
    assert total[0] > total[1]
    # the judge's own training data counts as the RLAIF run's
    data = RLAIFMethod._reward_training_data([RewardTerm("gen-rm", 1.0, run)])
    assert data.prompts == read_training_data(run).prompts


def test_contamination_map_knows_gen_rm(tmp_path):
    import yaml

    from personalign.evaluation.hacking import contaminated_evaluators, select_heldout_evaluator
    from personalign.methods.rlaif import RewardTerm

    run = tmp_path / "gen-rm"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"labels": "llm", "preference": {"include_demonstrations": False},
                                                     "rm": {"kind": "gen-rm"}}))
    terms = [RewardTerm("gen-rm", 1.0, str(run))]
    touched = contaminated_evaluators(terms)
    assert set(touched) == {f"gen-rm:{run}"}  # llm labels, no demonstration pairs: rules and similarity stay clean
    assert select_heldout_evaluator(terms) == "rules"
    (run / "config.yaml").write_text(yaml.safe_dump({"labels": "rules", "preference": {}}))
    assert set(contaminated_evaluators(terms)) == {f"gen-rm:{run}", "rules", "similarity"}
    with pytest.raises(Exception, match="no held-out evaluator"):
        select_heldout_evaluator(terms)


def test_cli_trains_gen_rm_and_validates_it_on_its_held_out_pairs(tmp_path, chat_tokenizer, monkeypatch):
    monkeypatch.setenv("PERSONALIGN_RUNS", str(tmp_path / "runs"))
    base = tmp_path / "tiny"
    make_tiny_llama(chat_tokenizer, hidden=16, layers=1).save_pretrained(base)
    chat_tokenizer.save_pretrained(base)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": p.prompt, "a": p.a, "b": p.b, "label": p.label}) + "\n"
                             for p in toy_pairs(1)))
    run = tmp_path / "gen-rm-run"
    runner = CliRunner()
    result = runner.invoke(app, ["reward", "train", "--kind", "gen-rm", "--labels", str(pairs), "--backbone", str(base),
                                 "--max-steps", "2", "--device", "cpu", "--out", str(run)])
    assert result.exit_code == 0, result.output
    assert "position bias" in result.output and f"--judge gen-rm --rm {run}" in result.output.replace("\n", "")
    config = (run / "config.yaml").read_text()
    assert "kind: gen-rm" in config and "lora: true" in config  # gen-rm's own defaults, resolved and saved
    out = tmp_path / "validate"
    result = runner.invoke(app, ["judge", "validate", "--judge", f"gen-rm:{run}", "--data", str(run / HELDOUT_FILE),
                                 "--device", "cpu", "--n-boot", "10", "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    reported = json.loads((run / GEN_RM_FILE).read_text())["heldout"]
    (name,) = summary
    assert summary[name]["judge"] == "gen-rm" and summary[name]["n"] == reported["n"]
    assert summary[name]["accuracy"] == pytest.approx(reported["accuracy"])  # the run's report, reproduced
    assert summary[name]["position_bias_rate"] == pytest.approx(reported["position_bias_rate"], nan_ok=True)
    # validating on the pairs it trained on is refused, in one line, before anything is written
    refused = runner.invoke(app, ["judge", "validate", "--judge", "gen-rm", "--rm", str(run), "--data", str(pairs),
                                  "--device", "cpu", "--out", str(tmp_path / "leak")])
    assert refused.exit_code == 2 and "trained on" in refused.output and not (tmp_path / "leak").exists()
    bad = runner.invoke(app, ["reward", "train", "--kind", "gen-rm", "--labels", str(pairs), "--backbone", "minilm",
                              "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "chat LM backbone" in bad.output


def test_gen_rm_config_checks_run_before_any_model():
    from personalign.errors import PersonalignError
    from personalign.judges.generative import check_config

    with pytest.raises(PersonalignError, match="chat LM backbone"):
        check_config(RewardModelConfig(kind="gen-rm", backbone="minilm"))
    with pytest.raises(PersonalignError, match=r"rm\.engine tinker: the service trains LoRA"):
        check_config(RewardModelConfig(kind="gen-rm", engine="tinker"))  # backbone 'default' is not on the service
    with pytest.raises(PersonalignError, match="unknown"):
        check_config(RewardModelConfig(kind="gen-rm", engine="remote"))
    check_config(RewardModelConfig(kind="gen-rm", engine="tinker", backbone="Qwen/Qwen3-8B"))
