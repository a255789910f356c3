"""RLAIF: GRPO advantages and loss by hand, reward-spec parsing, and a tiny policy that learns a rule reward."""

from __future__ import annotations

import math

import pytest
import torch

from personalign.backends.base import GenerationBackend
from personalign.engines.base import policy_loss
from personalign.errors import PersonalignError
from personalign.methods.rlaif import (
    RewardMix,
    RewardTerm,
    RLAIFConfig,
    RLAIFMethod,
    group_advantages,
    length_penalty,
    parse_reward_spec,
)
from personalign.profiles.schema import Profile

HELLO, MAYA = 33662, 14964  # " hello", " Maya" in the SmolLM2 vocabulary


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_group_advantages_by_hand():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]])
    adv = group_advantages(rewards, eps=0.0)
    # group 1: mean 0.5, unbiased std sqrt((4 * 0.25) / 3) = 0.57735
    expected = 0.5 / math.sqrt(1 / 3)
    assert torch.allclose(adv[0], torch.tensor([expected, -expected, -expected, expected]), atol=1e-5)
    # a group whose rewards are all equal carries no signal (with eps > 0 it is exactly 0, never NaN)
    assert torch.equal(group_advantages(rewards)[1], torch.zeros(4))


def test_group_advantages_leave_non_finite_rewards_out_of_the_group_stats():
    nan = float("nan")
    rewards = torch.tensor([[1.0, nan, 0.0, 1.0], [nan, nan, 3.0, 3.0], [nan, 5.0, nan, nan]])
    adv = group_advantages(rewards, eps=0.0)
    # group 1 over its 3 finite rewards: mean 2/3, unbiased std sqrt((1/9 + 4/9 + 1/9) / 2) = 0.57735
    std = math.sqrt((1 / 9 + 4 / 9 + 1 / 9) / 2)
    assert adv[0].tolist() == pytest.approx([(1 / 3) / std, 0.0, (-2 / 3) / std, (1 / 3) / std], abs=1e-5)
    # (setting nan to 0 instead, as before, would give mean 0.5 and move every advantage)
    assert torch.equal(group_advantages(rewards)[1], torch.zeros(4))  # equal finite rewards: no signal
    assert torch.equal(group_advantages(rewards)[2], torch.zeros(4))  # one finite reward: no group to compare
    assert torch.isfinite(group_advantages(rewards)).all()


def test_grpo_loss_gradient_follows_the_advantage_and_kl_is_zero_on_policy():
    logp = torch.tensor([[-1.0, -2.0], [-1.0, -2.0]], requires_grad=True)
    mask = torch.tensor([[True, True], [True, False]])
    advantages = torch.tensor([1.0, -1.0])
    loss, kl = policy_loss(logp, mask, advantages, ref_logp=logp.detach().clone(), beta=0.1)
    loss.backward()
    # −A · mean over tokens, then mean over 2 sequences: d/dlogp = −A / (len · 2)
    assert torch.allclose(logp.grad, torch.tensor([[-0.25, -0.25], [0.5, 0.0]]))
    assert float(kl) == pytest.approx(0.0)
    assert float(loss.detach()) == pytest.approx(0.0)  # mean of −A over sequences is 0 here


def test_grpo_kl_term_is_k3_and_pulls_toward_the_reference():
    logp = torch.tensor([[math.log(0.5)]], requires_grad=True)
    ref = torch.tensor([[math.log(0.25)]])
    loss, kl = policy_loss(logp, torch.tensor([[True]]), torch.tensor([0.0]), ref_logp=ref, beta=1.0)
    delta = math.log(0.25) - math.log(0.5)
    assert float(kl) == pytest.approx(math.exp(delta) - delta - 1)  # 0.5 − ln 0.5 − 1 = 0.1931
    loss.backward()
    assert logp.grad.item() > 0  # minimizing lowers logp, toward the less likely reference


def test_parse_reward_spec_and_errors():
    assert parse_reward_spec("rm:runs/rm-1,rules:0.5") == [RewardTerm("rm", 1.0, "runs/rm-1"), RewardTerm("rules", 0.5)]
    assert parse_reward_spec("rm:/a/b:0.3, length") == [RewardTerm("rm", 0.3, "/a/b"), RewardTerm("length", 1.0)]
    with pytest.raises(PersonalignError, match="unknown kind"):
        parse_reward_spec("bleu:1")
    with pytest.raises(PersonalignError, match="not a number"):
        parse_reward_spec("rules:lots")
    with pytest.raises(Exception, match="unknown kind"):
        RLAIFConfig(reward="nope")


def test_length_penalty():
    assert length_penalty(100, 50, 150) == 0.0
    assert length_penalty(300, 50, 150) == -1.0
    assert length_penalty(25, 50, 150) == pytest.approx(-0.5)
    assert length_penalty(5, None, None) == 0.0


def _restricted_llama(tokenizer, allowed: list[int], seed: int = 0):
    """A tiny random llama that can only emit `allowed` tokens (a bias of −30 on every other one).

    A fully random 49k-token model almost never produces a given word, so no group would ever differ
    in reward; restricting the output vocabulary gives GRPO something to learn in a few steps.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=1024, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    head = torch.nn.Linear(32, len(tokenizer), bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-30.0)
        for token in allowed:
            head.weight[token] = torch.randn(32) * 0.05
            head.bias[token] = 0.0
    model.lm_head = head
    return model.eval()


def _sign_off_rate(texts: list[str]) -> float:
    return sum(t.rstrip().endswith("Maya") for t in texts) / len(texts)


def test_tiny_policy_learns_a_rule_reward(chat_tokenizer, tmp_path):
    from personalign.backends.hf import HFBackend
    from personalign.config import ModelConfig, SamplingConfig
    from personalign.runs import RunDir

    model = _restricted_llama(chat_tokenizer, [HELLO, MAYA, chat_tokenizer.eos_token_id])
    backend = HFBackend(ModelConfig(device="cpu", dtype="fp32", batch_size=16), model=model, tokenizer=chat_tokenizer)
    profile = Profile(name="Maya Chen", task="greet", demonstrations=[{"prompt": "Say hi", "output": "hello Maya"}],
                      constraints={"sign_off": "Maya"}, train_prompts=["Greet Sam", "Greet Ana", "Greet Cy"],
                      eval_prompts=["Greet Bo"])
    method = RLAIFMethod(backend, RLAIFConfig(
        # 10 new tokens: room to end on its own (a sample cut at the limit is not taught to stop there). lr 1e-2
        # over 28 steps learned on 8 of 8 seeds (sign-off 0.81-0.94 from 0.47); lr 5e-2 over 14 steps, as before,
        # on 9 of 16, whichever sampler drew the tokens: it only passed on seed 0 by luck.
        reward="rules:1", max_steps=28, batch_size=3, group_size=6, lr=1e-2, beta=0.0, max_new_tokens=10,
        system_prompt=False, heldout_prompts=1, eval_every=14, lora={"r": 4, "alpha": 8, "dropout": 0.0},
        checkpoint_every=14,
    ))
    probe = SamplingConfig(n=32, temperature=1.0, top_p=1.0, max_new_tokens=10, seed=123)
    before = _sign_off_rate(backend.generate([[{"role": "user", "content": "Say hi"}]], probe)[0])
    run = RunDir(tmp_path / "rl")
    method.fit(profile, run, progress=False)
    after = _sign_off_rate(method.generate(["Say hi"], probe)[0])
    rewards = [r["reward"] for r in run.metrics if r.get("phase") == "rlaif"]
    assert after > before + 0.2, (before, after)
    assert sum(rewards[-4:]) / 4 > sum(rewards[:4]) / 4
    # per-step diagnostics, timings, the held-out summary, the plot and the reloadable adapter are all there
    row = next(r for r in run.metrics if r.get("phase") == "rlaif")
    for key in ("kl", "mean_words", "placeholder_rate", "meta_rate", "violation_sign_off", "seconds_sampling",
                "seconds_reward", "seconds_optimization", "reward_rules"):
        assert key in row
    assert (run.path / "hacking.png").stat().st_size > 0
    # rules is optimized, so the held-out monitor (on "Greet Cy", never trained on) uses similarity instead
    evaluations = [r for r in run.metrics if "heldout" in r]
    assert [r["step"] for r in evaluations] == [1, 14, 28]
    assert all(r["heldout_evaluator"] == "similarity" for r in evaluations)
    assert run.read_json("rl_summary.json")["heldout_evaluator"] == "similarity"
    assert (run.path / "adapter" / "adapter_config.json").is_file()
    assert (run.path / "method.json").is_file()


def test_token_logprobs_match_the_backend_scoring(tiny_backend):
    """Left padding + logits_to_keep must give the same sums as the backend's own scorer."""
    from personalign.engines.local import token_logprobs

    conv = [{"role": "user", "content": "Say hi"}]
    pairs = [tiny_backend.prompt_completion_ids(conv, text) for text in ("hello there", "a much longer reply here")]
    logp, mask = token_logprobs(tiny_backend.model, pairs, tiny_backend.tokenizer.pad_token_id, tiny_backend.device)
    sums = (logp * mask).sum(dim=1)
    expected = torch.tensor(tiny_backend.logprobs([conv, conv], ["hello there", "a much longer reply here"]))
    assert torch.allclose(sums, expected, atol=1e-4)


class _FixedReference(GenerationBackend):
    """The reference policy's sample for every prompt is one fixed text (so a verdict can be worked by hand)."""

    name = "fixed"

    def __init__(self, text: str):
        self.text = text

    def generate(self, conversations, sampling, progress=False):
        return [[self.text] * sampling.n for _ in conversations]

    def logprobs(self, conversations, completions):  # pragma: no cover - not used
        raise NotImplementedError


def test_pairwise_and_length_rewards_heldout_evaluation_and_resume(chat_tokenizer, tmp_path):
    from personalign.backends.hf import HFBackend
    from personalign.config import ModelConfig, SamplingConfig
    from personalign.evaluation.hacking import build_heldout_evaluator
    from personalign.runs import RunDir

    profile = Profile(name="Maya Chen", task="greet", demonstrations=[{"prompt": "Say hi", "output": "hello Maya"}],
                      constraints={"sign_off": "Maya", "max_words": 3}, train_prompts=["Greet Sam", "Greet Ana"],
                      eval_prompts=["Greet Bo"])
    fields = dict(reward="length:1,pairwise:0.5", pairwise_judge="rules", max_steps=2, batch_size=1, group_size=3,
                  lr=1e-2, max_new_tokens=5, system_prompt=False, heldout_prompts=1, eval_every=1,
                  checkpoint_every=1, lora={"r": 2, "alpha": 4, "dropout": 0.0})

    def backend():
        model = _restricted_llama(chat_tokenizer, [HELLO, MAYA, chat_tokenizer.eos_token_id])
        return HFBackend(ModelConfig(device="cpu", dtype="fp32"), model=model, tokenizer=chat_tokenizer)

    # 1. The reward terms by hand. Against the reference sample "hello Maya hello Maya" (signed off, but
    # 4 > 3 words) the rules judge makes "hello Maya" (passes both checks) win, the reference itself tie,
    # and six "hello"s (fail both) lose; swapping the A/B mapping gives [0, ½, 1].
    reference = "hello Maya hello Maya"
    mix = RewardMix([RewardTerm("length", 1.0), RewardTerm("pairwise", 0.5)], profile, _FixedReference(reference),
                    lambda p: [{"role": "user", "content": p}], pairwise_judge="rules")
    totals, parts = mix(["Say hi"] * 3, ["hello Maya", reference, "hello hello hello hello hello hello"])
    assert parts["reward_pairwise"] == [1.0, 0.5, 0.0]
    assert parts["reward_length"] == pytest.approx([0.0, -1 / 3, -1.0])  # −(words − 3) / 3 above the range
    assert totals == pytest.approx([1.0 * 0.0 + 0.5 * 1.0, -1 / 3 + 0.5 * 0.5, -1.0 + 0.0])

    # 2. Training with them: logged terms, the held-out monitor, resume.
    run = RunDir(tmp_path / "rl")
    method = RLAIFMethod(backend(), RLAIFConfig(**fields))
    method.fit(profile, run, progress=False)
    rows = [r for r in run.metrics if r.get("phase") == "rlaif"]
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        # the logged reward is the weighted sum of its logged terms (a dropped or re-weighted term breaks this)
        assert row["reward"] == pytest.approx(row["reward_length"] + 0.5 * row["reward_pairwise"])
        # length and pairwise-by-rules both optimize the rules score: the monitor must use another evaluator
        assert row["heldout_evaluator"] == "similarity"
    # the last evaluation is of the final policy: recompute it by hand on the monitor prompt
    texts = [g[0] for g in method.generate(["Greet Ana"], SamplingConfig(temperature=0.0, max_new_tokens=5))]
    assert rows[-1]["heldout"] == pytest.approx(build_heldout_evaluator("similarity", profile)(["Greet Ana"], texts))
    # resume: a longer run continues after step 2 instead of starting over
    RLAIFMethod(backend(), RLAIFConfig(**{**fields, "max_steps": 3, "resume": True})).fit(profile, run, progress=False)
    steps = [r["step"] for r in RunDir(run.path).metrics if r.get("phase") == "rlaif"]
    assert steps == [1, 2, 3]
    summary = RunDir(run.path).read_json("rl_summary.json")
    assert summary["steps"] == 3 and summary["heldout_evaluator"] == "similarity"


def test_rlaif_trains_only_on_the_training_side_and_refuses_an_unmonitorable_reward(tiny_backend, tmp_path):
    from personalign.runs import RunDir

    profile = Profile(name="Maya Chen", task="greet", demonstrations=[{"prompt": "Say hi", "output": "hello Maya"}],
                      train_prompts=["Greet Sam", "Greet Ana", "Greet Cy"], eval_prompts=["Greet Bo", "Greet Di"])
    method = RLAIFMethod(tiny_backend, RLAIFConfig(heldout_prompts=2))
    # the old split trained on eval prompts and monitored on the last of them
    assert method.split_prompts(profile) == (["Say hi", "Greet Sam"], ["Greet Ana", "Greet Cy"])
    rm = tmp_path / "rm"
    rm.mkdir()
    (rm / "config.yaml").write_text("labels: rules\npreference: {include_demonstrations: true}\n")
    refused = RLAIFMethod(tiny_backend, RLAIFConfig(reward=f"rm:{rm}", max_steps=1))
    with pytest.raises(PersonalignError, match="no held-out evaluator"):
        refused.fit(profile, RunDir(tmp_path / "run"), progress=False)
    assert not hasattr(tiny_backend.model, "peft_config")  # refused before the model was touched


def test_personalize_cli_routes_rlaif_and_generate_reloads_it(chat_tokenizer, example_profile_path, tmp_path):
    from typer.testing import CliRunner

    from conftest import make_tiny_llama
    from personalign.cli.main import app
    from personalign.methods.base import load_personalizer

    base = tmp_path / "tiny"
    make_tiny_llama(chat_tokenizer, hidden=16, layers=1).save_pretrained(base)
    chat_tokenizer.save_pretrained(base)
    out = tmp_path / "run"
    config = tmp_path / "rlaif.yaml"
    config.write_text("method_config: {max_new_tokens: 8, batch_size: 1, group_size: 2, heldout_prompts: 1}\n")
    result = CliRunner().invoke(app, [
        "personalize", "--method", "rlaif", "--profile", str(example_profile_path), "--model", str(base),
        "--dtype", "fp32", "--device", "cpu", "--max-steps", "2", "--reward", "rules:1,length:0.5", "--out", str(out),
        "--config", str(config),
    ])
    assert result.exit_code == 0, result.output
    assert (out / "method.json").is_file() and (out / "rl_summary.json").is_file()
    personalizer = load_personalizer(out)
    assert personalizer.name == "rlaif" and personalizer.config.reward == "rules:1,length:0.5"
    from personalign.config import SamplingConfig

    assert len(personalizer.generate(["Thank Sam."], SamplingConfig(max_new_tokens=4, n=1))[0]) == 1
    bad = CliRunner().invoke(app, ["personalize", "--method", "rlaif", "--profile", str(example_profile_path),
                                   "--reward", "bleu:1", "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "unknown kind" in bad.output


def test_kl_to_the_reference_is_measured_and_restrains_the_policy(chat_tokenizer, tmp_path):
    """β > 0 end to end: π_ref is the engine's snapshot of the base, its per-token log-probs reach the loss."""
    from personalign.backends.hf import HFBackend
    from personalign.config import ModelConfig
    from personalign.runs import RunDir

    profile = Profile(name="Maya Chen", task="greet", demonstrations=[{"prompt": "Say hi", "output": "hello Maya"}],
                      constraints={"sign_off": "Maya"}, eval_prompts=["Greet Sam"])

    def fit(beta: float):
        model = _restricted_llama(chat_tokenizer, [HELLO, MAYA, chat_tokenizer.eos_token_id])
        backend = HFBackend(ModelConfig(device="cpu", dtype="fp32"), model=model, tokenizer=chat_tokenizer)
        method = RLAIFMethod(backend, RLAIFConfig(
            reward="rules:1", max_steps=5, batch_size=2, group_size=4, lr=5e-2, beta=beta, max_new_tokens=8,
            system_prompt=False, heldout_prompts=0, lora={"r": 4, "alpha": 8, "dropout": 0.0}, checkpoint_every=5))
        run = RunDir(tmp_path / f"beta-{beta}")
        method.fit(profile, run, progress=False)
        return method, [r["kl"] for r in run.metrics if r.get("phase") == "rlaif"]

    _, free_kl = fit(0.0)
    held, held_kl = fit(2.0)
    assert held_kl[0] == pytest.approx(0.0, abs=1e-5)  # step 1 runs at π_ref's weights
    assert held_kl[-1] > 1e-4 and free_kl[-1] > 1e-4  # the policy moved away, and the KL says so
    assert held_kl[-1] < free_kl[-1]  # the β-weighted KL gradient pulled the policy back toward π_ref
    # π_ref stayed the base model: the snapshot scores like the model with the adapter switched off.
    pairs = [held.renderer.prompt_completion_ids([{"role": "user", "content": "Say hi"}], "hello Maya")]
    from personalign.methods.training import sequence_sums

    with held.backend.model.disable_adapter():
        base = sequence_sums(held.engine, pairs)
    assert torch.allclose(sequence_sums(held.ref, pairs), base, atol=1e-5)
    assert not torch.allclose(sequence_sums(held.engine, pairs), base, atol=1e-3)
