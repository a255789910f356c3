"""Held-out data by construction: recorded training sets never meet the eval set, and scorers refuse runs that did."""

from __future__ import annotations

import json

import pytest

from personalign.errors import PersonalignError
from personalign.io import atomic_write_json, atomic_write_jsonl
from personalign.profiles import load_profile
from personalign.profiles.schema import Profile
from personalign.runs import RunDir
from personalign.splits import (
    TRAINING_DATA_FILE,
    LeakageError,
    TrainingData,
    assert_disjoint,
    fingerprint,
    group_split,
    near_duplicates_of,
    read_training_data,
    training_prompts,
    write_training_data,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_fingerprints_ignore_spacing_and_case_and_overlap_counts_prompts_and_texts():
    assert fingerprint("Thank  Bo\nfor dinner.") == fingerprint(" thank bo for DINNER. ")
    assert fingerprint("Thank Bo.") != fingerprint("Thank Al.")
    data = TrainingData.of(["Ask Al for notes."], ["Hi Al, thanks."])
    assert data.overlap(["ask al  for notes.", "Other."], ["HI AL, THANKS.", "x"]) == (1, 1)
    assert data.overlap(["Hi Al, thanks."]) == (1, 0)  # a held-out text used as a training prompt counts too


def test_profile_refuses_an_eval_prompt_that_is_a_training_prompt(tmp_path):
    from personalign.profiles.loading import load_profile as load

    base = {"name": "Zed", "task": "write notes", "demonstrations": [{"prompt": "Thank Al.", "output": "Thanks, Al."}]}
    with pytest.raises(ValueError, match=r"eval_prompts\[0\].*also a demonstration or train prompt"):
        Profile(**base, eval_prompts=["thank  al."])
    with pytest.raises(ValueError, match=r"eval_prompts\[1\]"):
        Profile(**base, train_prompts=["Ask Bo."], eval_prompts=["Ask Cy.", "Ask Bo."])
    with pytest.raises(ValueError, match="reference is also a demonstration's output"):
        Profile(**base, eval_prompts=[{"prompt": "Ask Cy.", "reference": "Thanks, Al."}])
    path = tmp_path / "p.yaml"
    path.write_text("name: Zed\ntask: notes\ndemonstrations: [{prompt: Thank Al., output: Thanks.}]\n"
                    "eval_prompts: [Thank Al.]\n")
    with pytest.raises(PersonalignError) as info:
        load(path)
    assert str(info.value).startswith(f"{path}: eval_prompts[0] ('Thank Al.') is also a demonstration")
    assert "\n" not in str(info.value)


def test_training_prompts_are_demonstrations_then_train_prompts(example_profile_path):
    profile = load_profile(example_profile_path)
    prompts = training_prompts(profile)
    assert prompts == [d.prompt for d in profile.demonstrations] + profile.train_prompts
    assert not {fingerprint(p) for p in prompts} & {fingerprint(p.prompt) for p in profile.eval_prompts}


def test_group_split_keeps_each_prompt_on_one_side():
    groups = ["p1", "p1", "p2", "p3", "p3", "p3", "p4", "P4 "]
    train, held = group_split(groups, 0.5, seed=0)
    assert sorted(train + held) == list(range(len(groups)))
    held_groups = {groups[i].strip().lower() for i in held}
    assert len(held_groups) == 2 and not held_groups & {groups[i].strip().lower() for i in train}
    assert group_split(["only", "only"], 0.5, 0) == ([0, 1], [])
    assert group_split(groups, 0.0, 0) == (list(range(8)), [])


def test_reward_model_split_is_by_prompt_not_by_pair():
    from personalign.judges.labeled_sets import LabeledPair
    from personalign.judges.reward_model import split_pairs

    pairs = [LabeledPair(f"prompt {i // 3}", f"a{i}", f"b{i}", "A") for i in range(30)]  # 3 pairs per prompt
    train, held = split_pairs(pairs, 0.2, seed=0)
    assert len(train) + len(held) == 30 and len(held) == 6
    assert not {p.prompt for p in train} & {p.prompt for p in held}  # by pair, 2 prompts would straddle


def test_near_duplicates_of_held_out_texts_exact_and_by_embedding():
    import numpy as np

    class Toy:
        def encode(self, texts):
            vectors = np.array([[1.0, 0.0] if "meeting" in t else [0.0, 1.0] for t in texts])
            return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    held = ["Ask Professor Nguyen for a meeting."]
    assert near_duplicates_of(["ask professor  nguyen for a meeting.", "Thank Bo."], held) == [True, False]
    assert near_duplicates_of(["Set up a meeting with Nguyen.", "Thank Bo."], held, Toy(), 0.9) == [True, False]


def test_synthetic_prompts_near_an_eval_prompt_are_dropped_and_counted(monkeypatch):
    from personalign.backends.base import GenerationBackend
    from personalign.methods.synthetic import SyntheticConfig, build_prompts, generate_synthetic

    profile = Profile(name="Zed Park", task="write emails",
                      demonstrations=[{"prompt": "Thank Al for lunch.", "output": "Hi Al, thank you for lunch today; "
                                       "it was lovely to catch up.\n\nBest,\nZed"}],
                      eval_prompts=["Ask my advisor for a meeting next week."])
    config = SyntheticConfig(n_candidates=3, n_keep=5, best_of=1, repairs=False)
    built = [s.text for s in build_prompts(profile, config.n_candidates, config.seed)]
    assert len(built) == 3
    near = built[1]  # the toy embedder puts this one right next to the eval prompt

    axes: dict[str, int] = {}

    class Toy:  # one axis per distinct text, except `near`, which shares the eval prompt's axis
        def encode(self, texts):
            import numpy as np

            keys = [fingerprint(profile.eval_prompts[0].prompt) if t == near else fingerprint(t) for t in texts]
            return np.eye(32)[[axes.setdefault(k, len(axes)) for k in keys]]

    class Teacher(GenerationBackend):
        name = "scripted"

        def generate(self, conversations, sampling, progress=False):
            return [[f"Hi there, a note about this: {c[-1]['content']} Thank you so much.\n\nBest,\nZed"]
                    * sampling.n for c in conversations]

        def logprobs(self, conversations, completions):  # pragma: no cover - not used
            raise NotImplementedError

    monkeypatch.setattr("personalign.backends.embedder.get_embedder", lambda *a, **k: Toy())
    rows, report = generate_synthetic(profile, Teacher(), config)
    assert near not in [r["prompt"] for r in rows]
    assert report["rejected"].get("near_eval_prompt") == 1
    assert sum(report["rejected"].values()) + report["kept"] == report["generated"] == 3


def _hand_made_run(folder, prompts, texts=()):
    folder.mkdir(parents=True)
    atomic_write_json(folder / "method.json", {"method": "sft", "config": {}, "model": {}, "adapter": None})
    write_training_data(folder, TrainingData.of(prompts, texts))
    return folder


def test_compare_refuses_a_run_that_trained_on_an_eval_prompt(example_profile_path, tmp_path):
    from personalign.evaluation.compare import CompareConfig, run_comparison

    profile = load_profile(example_profile_path)
    evals = [p.prompt for p in profile.eval_prompts]
    leaky = _hand_made_run(tmp_path / "leaky", [profile.demonstrations[0].prompt, evals[0], evals[3].upper()])
    config = CompareConfig(profile=str(example_profile_path), methods=[], runs=[str(leaky)], out=str(tmp_path / "c"))
    with pytest.raises(LeakageError) as info:
        run_comparison(config, progress=False)
    message = str(info.value)
    assert message.startswith(f"run {leaky} trained on 2 of the 14 eval prompts") and "\n" not in message
    assert not (tmp_path / "c").exists()  # refused before a run dir or a model was made
    # scoring on only the first eval prompt still overlaps once
    with pytest.raises(LeakageError, match="trained on 1 of the 1 eval prompts"):
        run_comparison(config.model_copy(update={"n_prompts": 1}), progress=False)
    # a run that recorded nothing is refused too: nothing shows it is clean
    bare = tmp_path / "bare"
    bare.mkdir()
    atomic_write_json(bare / "method.json", {"method": "sft", "config": {}, "model": {}, "adapter": None})
    with pytest.raises(LeakageError, match=f"no {TRAINING_DATA_FILE}"):
        run_comparison(config.model_copy(update={"runs": [str(bare)]}), progress=False)
    # a clean record passes the check (and then fails later only for its fake model, not for leakage)
    clean = _hand_made_run(tmp_path / "clean", training_prompts(profile))
    assert_disjoint(clean, evals)


def test_inline_methods_are_checked_in_compare_too(tiny_backend, example_profile_path):
    from personalign.methods.prompting import PromptMethod

    profile = load_profile(example_profile_path)
    method = PromptMethod(tiny_backend)
    method.fit(profile)
    evals = [p.prompt for p in profile.eval_prompts]
    method.assert_not_trained_on(evals)  # the demonstrations pool holds no eval prompt
    # the same method fed an eval prompt as a demonstration is refused when checked against it
    with pytest.raises(LeakageError, match="method prompt trained on 1 of the 1 eval prompts"):
        method.assert_not_trained_on([profile.demonstrations[2].prompt])


def test_record_training_refuses_at_once_before_training(tiny_backend, example_profile_path, tmp_path):
    from personalign.methods.dpo import DPOMethod

    profile = load_profile(example_profile_path)
    pairs = tmp_path / "pairs.jsonl"
    atomic_write_jsonl(pairs, [{"prompt": profile.eval_prompts[0].prompt, "chosen": "a", "rejected": "b"}])
    method = DPOMethod(tiny_backend, DPOMethod.config_class(pairs=str(pairs), max_steps=1))
    with pytest.raises(LeakageError, match="method dpo trained on 1 of the 14 eval prompts"):
        method.fit(profile, RunDir(tmp_path / "run"))
    assert not (tmp_path / "run" / "method.json").exists()


def _fit(name, backend, profile, run, **config):
    from personalign.methods.base import build_personalizer

    method = build_personalizer(name, backend, config)
    if name == "rlaif":
        method.fit(profile, run, progress=False)
    else:
        method.fit(profile, run)
    return method


def test_every_trained_method_records_a_training_set_disjoint_from_the_eval_set(
    chat_tokenizer, example_profile_path, tmp_path
):
    """Each method's recorded training set on the example profile: what it should hold, and no eval prompt."""
    from conftest import make_tiny_llama
    from personalign.backends.hf import HFBackend
    from personalign.config import ModelConfig

    profile = load_profile(example_profile_path)
    evals = [p.prompt for p in profile.eval_prompts]
    demos = TrainingData.of([d.prompt for d in profile.demonstrations], [d.output for d in profile.demonstrations])
    pairs = tmp_path / "pairs.jsonl"
    atomic_write_jsonl(pairs, [{"prompt": d.prompt, "chosen": d.output, "rejected": "No."}
                               for d in profile.demonstrations])
    small = {"max_steps": 1, "batch_size": 2, "max_length": 64, "lora": {"r": 2, "alpha": 4}}
    configs = {
        "sft": {**small, "synthetic": {"n_keep": 0}},
        "dpo": {**small, "pairs": str(pairs)},
        "ditto": {**small, "sft_steps": 1, "iterations": 1, "steps_per_iteration": 1, "samples_per_prompt": 1,
                  "pairs_per_step": 2, "sample_max_new_tokens": 4},
        "rlaif": {"max_steps": 1, "batch_size": 1, "group_size": 2, "max_new_tokens": 4, "heldout_prompts": 2,
                  "eval_every": 1, "system_prompt": False, "lora": {"r": 2, "alpha": 4, "dropout": 0.0}},
    }
    for name, config in configs.items():
        backend = HFBackend(ModelConfig(device="cpu", dtype="fp32"), model=make_tiny_llama(chat_tokenizer, hidden=16,
                                                                                           layers=1),
                            tokenizer=chat_tokenizer)
        run = RunDir(tmp_path / name)
        _fit(name, backend, profile, run, **config)
        recorded = read_training_data(run.path)
        assert recorded is not None, f"{name} recorded no training data"
        assert recorded.overlap(evals) == (0, 0), name
        assert json.loads((run.path / TRAINING_DATA_FILE).read_text())["prompts"], name
        if name in ("sft", "ditto"):
            assert demos.prompts <= recorded.prompts and demos.texts <= recorded.texts, name
        if name == "dpo":
            assert recorded.prompts == demos.prompts and fingerprint("No.") in recorded.texts
        if name == "rlaif":
            # trains on the training side only (demonstrations + train_prompts), its monitor prompts included
            assert recorded.prompts == TrainingData.of(training_prompts(profile)).prompts
            rows = [r for r in run.metrics if r.get("phase") == "rlaif"]
            assert rows[0]["heldout_evaluator"] == "similarity"  # rules is optimized by the default reward
        assert_disjoint(run.path, evals)


def test_a_method_that_trains_on_an_authors_held_out_text_is_refused(tiny_backend, tmp_path):
    """`eval authors`: an author's test texts are references; SFT data holding one is refused before training."""
    from personalign.methods.sft import SFTMethod

    reference = "The minister said on Tuesday that the plan would go ahead."
    held_out = {"prompt": "Write an article that starts with: The minister", "reference": reference}
    profile = Profile(name="Author 3", task="write news",
                      demonstrations=[{"prompt": "Write about rain.", "output": "It rained."}], eval_prompts=[held_out])
    data = tmp_path / "synthetic.jsonl"
    atomic_write_jsonl(data, [{"prompt": "Write about plans.", "output": reference.upper()}])
    method = SFTMethod(tiny_backend, SFTMethod.config_class(synthetic_data=str(data), max_steps=1))
    with pytest.raises(LeakageError, match="method sft trained on 1 of the 1 held-out texts"):
        method.fit(profile, RunDir(tmp_path / "run"))
