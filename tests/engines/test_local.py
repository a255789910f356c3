"""The local engine: built-in and custom losses equal the hand-written math, the step shape SFT uses, snapshots,
state, and sampling's stop reasons."""

from __future__ import annotations

import math
from concurrent.futures import Future

import pytest
import torch

from personalign.backends.hf import sequence_logprobs
from personalign.config import SamplingConfig
from personalign.engines.base import (
    AdamParams,
    CrossEntropy,
    Datum,
    LoraSettings,
    PolicyLoss,
    TrainingEngine,
    policy_loss,
)
from personalign.engines.local import LocalEngine
from personalign.methods.sft import SFTConfig, run_sft
from personalign.methods.training import datums, dpo_custom_loss, dpo_loss

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
REPLIES = ["Hi Al.\n\nCheers,\nZed", "Hello there, Bo, how are you?", "Yo.", "Greetings to you, Cy, and all."]


def _pairs(backend):
    return [backend.prompt_completion_ids([{"role": "user", "content": f"Greet {n}."}], reply)
            for n, reply in zip(["Al", "Bo", "Cy", "Di"], REPLIES, strict=True)]


def _engine(backend) -> LocalEngine:
    engine = LocalEngine(backend, LoraSettings(r=4, dropout=0.0, target_modules=ALL_LINEAR))
    # Move LoRA B off zero so gradients reach both adapter matrices and the policy differs from the base.
    with torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        for name, p in engine.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return engine


def _grads(engine) -> dict[str, torch.Tensor]:
    out = {n: p.grad.detach().clone() for n, p in engine.model.named_parameters() if p.grad is not None}
    engine.optimizer.zero_grad(set_to_none=True)
    return out


def _per_token(model, pair) -> torch.Tensor:
    """log p of each completion token from one unpadded forward: an independent statement of the log-probs."""
    prompt, completion = pair
    ids = torch.tensor([prompt + completion])
    logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(completion).unsqueeze(-1)).squeeze(-1)


def test_dpo_custom_loss_through_the_engine_equals_the_hand_dpo_loss(tiny_backend):
    engine = _engine(tiny_backend)
    pairs = _pairs(tiny_backend)
    chosen, rejected = pairs[:2], pairs[2:]
    ref_c, ref_r = torch.tensor([-40.0, -55.0]), torch.tensor([-30.0, -60.0])
    out = engine.forward_backward(datums(chosen + rejected), dpo_custom_loss(ref_c, ref_r, beta=0.1)).result()
    ours = _grads(engine)
    engine.model.eval()
    logps = sequence_logprobs(engine.model, chosen + rejected, tiny_backend.tokenizer.pad_token_id, torch.device("cpu"))
    hand, chosen_r, rejected_r = dpo_loss(logps[:2], logps[2:], ref_c, ref_r, 0.1)
    hand.backward()
    theirs = _grads(engine)
    assert out.loss == pytest.approx(float(hand), abs=1e-5)
    assert out.metrics["reward_margin"] == pytest.approx(float((chosen_r - rejected_r).mean()), abs=1e-5)
    assert out.logprob_sums == pytest.approx(logps.tolist(), abs=1e-4)
    assert ours.keys() == theirs.keys() and ours
    assert all(torch.allclose(ours[k], theirs[k], atol=1e-6, rtol=1e-4) for k in ours)


def _grpo_loss_as_before(logps, refs, advantages, beta):
    """The GRPO loss as rlaif.grpo_loss stated it before the engine existed, per sequence."""
    per_seq, kls = [], []
    for logp, ref, a in zip(logps, refs, advantages, strict=True):
        ratio = torch.exp(logp - logp.detach())
        delta = ref - logp
        kl = torch.exp(delta) - delta - 1
        per_seq.append((-ratio * a + beta * kl).mean())
        kls.append(kl.mean())
    return torch.stack(per_seq).mean(), torch.stack(kls).mean()


def test_grpo_step_through_the_policy_loss_equals_the_grpo_loss(tiny_backend):
    engine = _engine(tiny_backend)
    pairs = _pairs(tiny_backend)
    engine.model.eval()
    with torch.no_grad():
        refs = [_per_token(engine.model, p) - 0.3 * torch.rand(len(p[1]), generator=torch.Generator().manual_seed(i))
                for i, p in enumerate(pairs)]
    advantages = [1.2, -0.4, 0.7, -1.5]
    data = [Datum(p, c, advantage=a, ref_logprobs=r.tolist())
            for (p, c), a, r in zip(pairs, advantages, refs, strict=True)]
    out = engine.forward_backward(data, PolicyLoss(kl_beta=0.2)).result()
    ours = _grads(engine)
    hand, kl = _grpo_loss_as_before([_per_token(engine.model, p) for p in pairs], refs, advantages, 0.2)
    hand.backward()
    theirs = _grads(engine)
    assert out.loss == pytest.approx(float(hand), abs=1e-5)
    assert out.metrics["kl"] == pytest.approx(float(kl), abs=1e-6) and out.metrics["kl"] > 0
    assert all(torch.allclose(ours[k], theirs[k], atol=1e-6, rtol=1e-4) for k in ours)


def test_policy_loss_ppo_clip_and_importance_ratio_by_hand():
    logp = torch.tensor([[math.log(0.6)], [math.log(0.6)]], requires_grad=True)
    sampled = torch.tensor([[math.log(0.4)], [math.log(0.4)]])  # ratio 1.5 for both sequences
    mask = torch.ones(2, 1, dtype=torch.bool)
    adv = torch.tensor([1.0, -1.0])
    loss, _ = policy_loss(logp, mask, adv, sampling_logp=sampled, clip_epsilon=0.2)
    # A = +1: min(1.5, 1.2) = 1.2, clipped (no gradient); A = −1: min(−1.5, −1.2) = −1.5, unclipped.
    assert float(loss) == pytest.approx((-1.2 + 1.5) / 2)
    loss.backward()
    assert logp.grad.flatten().tolist() == pytest.approx([0.0, 1.5 / 2])  # d(−ρA)/dlogp = −ρA = 1.5, over 2 sequences
    logp.grad = None
    unclipped, _ = policy_loss(logp, mask, adv, sampling_logp=sampled)  # importance sampling: −ρA, no clip
    assert float(unclipped) == pytest.approx((-1.5 + 1.5) / 2)


def test_cross_entropy_weights_select_and_scale_tokens(tiny_backend):
    engine = _engine(tiny_backend)
    pairs = _pairs(tiny_backend)[:2]
    engine.model.eval()
    with torch.no_grad():
        nll = [-_per_token(engine.model, p) for p in pairs]
    unit = engine.forward(datums(pairs), CrossEntropy()).result().loss
    assert unit == pytest.approx(float(torch.cat(nll).mean()), abs=1e-5)  # token mean over the batch
    weights = [[2.0] + [0.0] * (len(pairs[0][1]) - 1), [0.0] * (len(pairs[1][1]) - 1) + [1.0]]
    weighted = engine.forward([Datum(p, c, weights=w) for (p, c), w in zip(pairs, weights, strict=True)],
                              CrossEntropy()).result().loss
    assert weighted == pytest.approx(float((2 * nll[0][0] + nll[1][-1]) / 3), abs=1e-5)


class RecordingEngine(TrainingEngine):
    """Records which protocol calls a method makes, delegating each to a real local engine."""

    def __init__(self, inner: LocalEngine):
        self.inner = inner
        self.calls: list[str] = []

    def _record(self, name: str, *args, **kwargs):
        self.calls.append(name)
        return getattr(self.inner, name)(*args, **kwargs)

    def forward_backward(self, data, loss) -> Future:
        return self._record("forward_backward", data, loss)

    def forward(self, data, loss) -> Future:
        return self._record("forward", data, loss)

    def optim_step(self, params: AdamParams) -> Future:
        return self._record("optim_step", params)

    def sample(self, prompts, sampling, progress=False) -> Future:
        return self._record("sample", prompts, sampling, progress)

    def compute_logprobs(self, data) -> Future:
        return self._record("compute_logprobs", data)

    def snapshot(self):
        return self._record("snapshot")

    def save_state(self, folder, optimizer=True):
        return self._record("save_state", folder, optimizer)

    def load_state(self, folder, optimizer=True):
        return self._record("load_state", folder, optimizer)

    def save_weights(self, folder):
        return self._record("save_weights", folder)


def test_sft_issues_one_optim_step_per_batch_and_never_samples(tiny_backend, tmp_path):
    engine = RecordingEngine(LocalEngine(tiny_backend, LoraSettings(r=4)))
    pairs = _pairs(tiny_backend) * 2
    config = SFTConfig(max_steps=5, batch_size=3, val_fraction=0.25, eval_every=2, patience=5, checkpoint_every=5)
    stats = run_sft(engine, pairs, config, tmp_path, progress=False)
    steps = [c for c in engine.calls if c in ("forward_backward", "optim_step")]
    assert stats["steps"] == 5
    assert steps == ["forward_backward", "optim_step"] * 5  # exactly one optimizer step per batch, in order
    assert "sample" not in engine.calls and "compute_logprobs" not in engine.calls
    assert engine.calls.count("forward") == 2 * 1  # held-out loss at steps 2 and 4: 2 rows = one batch each


def test_snapshot_is_frozen_and_fresh_optimizer_on_weights_only_load(tiny_backend, tmp_path):
    engine = _engine(tiny_backend)
    data = datums(_pairs(tiny_backend))
    ref = engine.snapshot()
    before = ref.compute_logprobs(data).result().sums()
    engine.save_state(tmp_path / "s0", optimizer=False)
    engine.forward_backward(data, CrossEntropy()).result()
    engine.optim_step(AdamParams(learning_rate=0.05)).result()
    moved = engine.compute_logprobs(data).result().sums()
    assert (moved - before).abs().max() > 1e-3  # the policy moved
    assert torch.equal(ref.compute_logprobs(data).result().sums(), before)  # π_ref did not
    assert engine.optimizer.state  # Adam moments exist after a step ...
    engine.load_state(tmp_path / "s0", optimizer=False)
    assert not engine.optimizer.state  # ... and a weights-only load starts a fresh optimizer
    assert torch.equal(engine.compute_logprobs(data).result().sums(), before)


def test_sample_reports_length_and_stop(tiny_backend):
    engine = _engine(tiny_backend)
    prompt = tiny_backend.prompt_ids([{"role": "user", "content": "Say hi"}])
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=3)
    (seq,), = engine.sample([prompt], greedy).result()
    assert seq.stop_reason == "length" and len(seq.tokens) == 3  # a random model does not stop in 3 tokens
    eos = tiny_backend.tokenizer.eos_token_id

    def favour_end_of_turn(module, inputs, logits):  # make end-of-turn the likeliest token
        logits[..., eos] += 100.0
        return logits

    hook = engine.model.get_output_embeddings().register_forward_hook(favour_end_of_turn)
    (seq,), = engine.sample([prompt], greedy).result()
    hook.remove()
    assert seq.stop_reason == "stop" and seq.tokens == []  # ended on its own; end-of-turn not in the tokens
