"""The tinker engine against a real Tinker-API server (skyrl-tx on CPU, `make tinker-venv`), on the default model:
SFT through the method's loop (loss falls, the target's and the signature's log-probs rise, greedy samples from
the saved weights reproduce it, the adapter downloads), DPO through its custom loss (loss falls, the signature
gains on another sign-off of the same body; its own log-prob falls: see the test), and `personalize --engine
tinker` + `generate --run` through the CLI. Minutes: the one server of the session (tests/conftest.py) compiles
each function once per shape, and every call here keeps to the same shapes."""

from __future__ import annotations

import json

import pytest

from personalign.config import ModelConfig, SamplingConfig, TinkerSettings
from personalign.engines.base import Datum, LoraSettings

pytestmark = pytest.mark.tinker  # the `tinker_server` fixture (tests/conftest.py) skips without the venv
SIGNATURE = "Cheers,\nZed"
BODY = "Thanks, that works for me."
TARGET = f"{BODY}\n\n{SIGNATURE}"
OTHER_SIGN_OFF = "Best regards,\nthe team"
# Every sample here asks for this many tokens: the server compiles one sampling program per max_new_tokens.
MAX_NEW_TOKENS = 24


def _backend(server, adapter: str | None = None):
    from personalign.backends.tinker import TinkerBackend

    return TinkerBackend(ModelConfig(backend="tinker", model=str(server.model_dir), adapter=adapter,
                                     tinker=TinkerSettings(base_url=server.base_url)))


def _pair(backend, completion: str, ended: bool = True):
    from personalign.engines.render import ChatRenderer

    return ChatRenderer(backend.tokenizer).prompt_completion_ids([{"role": "user", "content": "Can we meet at 3?"}],
                                                                  completion, ended)


def _sign_off_slices(backend) -> tuple[slice, slice, slice]:
    """Where the sign-offs lie in the completions of TARGET and of BODY signed OTHER_SIGN_OFF (ended, counted
    from the end: rows of per-token log-probs are right-aligned): (the signature's text, TARGET's part after the
    shared body, the other's part after it; both parts with their end-of-turn tokens). Read from per-token
    log-probs, they give log-probs given the prompt and the body at no extra forward (nor a new shape for the
    server to compile)."""
    text, other = _pair(backend, TARGET, ended=False)[1], _pair(backend, f"{BODY}\n\n{OTHER_SIGN_OFF}", False)[1]
    ended, other_ended = _pair(backend, TARGET)[1], _pair(backend, f"{BODY}\n\n{OTHER_SIGN_OFF}")[1]
    assert ended[: len(text)] == text  # the template only appends its end-of-turn tokens
    shared = next(i for i, (a, b) in enumerate(zip(text, other, strict=False)) if a != b)
    assert shared > 5 and backend.tokenizer.decode(text[shared:]) == SIGNATURE
    return (slice(shared - len(ended), len(text) - len(ended)), slice(shared - len(ended), None),
            slice(shared - len(other_ended), None))


def _logprob_of(logprobs, row: int, part: slice) -> float:
    """Sum of one datum's per-token log-probs over `part` (counted from the end: rows are right-aligned)."""
    return float(logprobs.values[row, part].sum())


def test_client_tokenizer_renders_what_the_local_model_renders(tinker_server, chat_tokenizer):
    """The converted folder's tokenizer (GPT2TokenizerFast for transformers 4) gives the default model's ids."""
    from personalign.engines.render import ChatRenderer

    chat = [{"role": "user", "content": "Can we meet at 3?"}]
    assert _pair(_backend(tinker_server), TARGET) == ChatRenderer(chat_tokenizer).prompt_completion_ids(chat, TARGET)


def test_sft_lowers_the_loss_and_samples_the_target_from_saved_weights(tinker_server, tmp_path):
    from personalign.engines import build_engine
    from personalign.methods.sft import SFTConfig, run_sft

    backend = _backend(tinker_server)
    engine = build_engine("tinker", backend, LoraSettings(r=8), None)
    pair, signature = _pair(backend, TARGET), _sign_off_slices(backend)[0]
    before_lp = engine.compute_logprobs([Datum(*pair)]).result()
    before, before_sig = float(before_lp.sums()[0]), _logprob_of(before_lp, 0, signature)
    losses: list[float] = []
    stats = run_sft(engine, [pair], SFTConfig(max_steps=4, batch_size=1, lr=1e-3, checkpoint_every=4),
                    tmp_path, log=lambda row, step: losses.append(row["loss"]), progress=False)
    after_lp = engine.compute_logprobs([Datum(*pair)]).result()
    after, after_sig = float(after_lp.sums()[0]), _logprob_of(after_lp, 0, signature)
    assert stats["steps"] == 4 and len(losses) == 4
    assert losses[-1] < 0.5 * losses[0]
    assert after > before + 1.0
    assert after_sig > before_sig + 1.0  # SFT raises the signature's log-prob given the body
    # The checkpoint the loop wrote holds a tinker:// training state.
    state = json.loads(next(tmp_path.glob("checkpoints/step-*/tinker.json")).read_text())
    assert state["state"].startswith("tinker://")

    saved = engine.save_weights(tmp_path)
    assert saved["adapter"].startswith("tinker://") and saved["tinker_state"].startswith("tinker://")
    assert saved.get("local_adapter") == "adapter", saved.get("local_adapter_error")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert len(pair[1]) < MAX_NEW_TOKENS  # room to stop on the end-of-turn token
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=MAX_NEW_TOKENS)
    assert _backend(tinker_server, saved["adapter"]).generate([[{"role": "user", "content": "Can we meet at 3?"}]],
                                                             greedy) == [[TARGET]]


def test_dpo_custom_loss_raises_the_signature_over_another_sign_off(tinker_server):
    from personalign.engines import build_engine
    from personalign.methods.dpo import DPOConfig
    from personalign.methods.training import TrainConfig, TrainingSession, datums, dpo_custom_loss

    backend = _backend(tinker_server)
    engine = build_engine("tinker", backend, LoraSettings(r=8), None)
    # The same reply signed two ways: every token up to the sign-off is shared, and their log-probs cancel in
    # DPO's margin, so what DPO is given to learn is the signature over the other sign-off, given the body.
    pairs = [_pair(backend, TARGET), _pair(backend, f"{BODY}\n\n{OTHER_SIGN_OFF}")]
    signature, chosen_end, rejected_end = _sign_off_slices(backend)
    before = engine.compute_logprobs(datums(pairs)).result()
    ref = before.sums()
    lr = DPOConfig().lr  # the dpo method's default, 5e-5
    session = TrainingSession(engine, TrainConfig(lr=lr, max_steps=3), None)
    outs = [session.update(datums(pairs), dpo_custom_loss(ref[:1], ref[1:], beta=0.1)) for _ in range(3)]
    after = engine.compute_logprobs(datums(pairs)).result()
    sig = (_logprob_of(before, 0, signature), _logprob_of(after, 0, signature))
    margin = [_logprob_of(lp, 0, chosen_end) - _logprob_of(lp, 1, rejected_end) for lp in (before, after)]
    numbers = f"losses {[round(o.loss, 4) for o in outs]}, signature | body {sig[0]:.2f} -> {sig[1]:.2f}, " \
              f"signed minus signed otherwise | body {margin[0]:.2f} -> {margin[1]:.2f}"
    assert outs[0].loss == pytest.approx(0.6931, abs=1e-3), numbers  # π = π_ref at step 0: −log σ(0)
    assert outs[-1].loss < outs[0].loss and outs[-1].metrics["reward_margin"] > 0, numbers
    # The shared body cancels: the sign-offs' margin given the body is the whole completions' margin.
    assert margin[0] == pytest.approx(float(ref[0] - ref[1]), abs=1e-3), numbers
    assert margin[1] > margin[0] + 1.0, numbers
    # The signature's own log-prob given the body FELL at every setting tried on skyrl-tx (its LoRA: alpha 32 at
    # rank 8), measured with this test's code: lr 5e-5, 3 steps: -20.90 -> -22.43 (the other sign-off with its
    # end-of-turn -22.55 -> -29.12, the shared body -29.14 -> -37.17); 6 steps, rejected "Sent from my phone":
    # -20.90 -> -24.06; lr 1e-5, 1 step: -20.90 -> -21.00 (chosen -50.72 -> -51.34, rejected -51.69 -> -52.62).
    # DPO's likelihood displacement (Razin et al. 2024, arXiv:2410.08847): the loss only orders the two, and
    # pushing the other sign-off down pulls the shared tokens' and the signature's down with it from the first
    # step. SFT (above) is what raises the signature itself; DPO raises it over the alternative, no more.


def test_personalize_engine_tinker_then_generate_and_export_the_run(tinker_server, tmp_path):
    """The CLI path: `personalize --engine tinker` writes a run whose manifest `generate --run` samples from
    (tinker:// weights on the server) and `export --format adapter` copies (the downloaded LoRA)."""
    import yaml
    from typer.testing import CliRunner

    from personalign.cli.main import app

    profile = tmp_path / "toy.yaml"
    profile.write_text(yaml.safe_dump({
        "name": "Zed Toy", "task": "write notes", "constraints": {"sign_off": SIGNATURE},
        "demonstrations": [{"prompt": "Can we meet at 3?", "output": TARGET}], "eval_prompts": ["Greet Gus."]}))
    config = tmp_path / "sft.yaml"
    config.write_text(yaml.safe_dump({"method_config": {"max_steps": 2, "batch_size": 1, "lr": 1e-3, "lora": {"r": 8},
                                                        "synthetic": {"n_keep": 0}}}))
    run = tmp_path / "run"
    runner = CliRunner()
    result = runner.invoke(app, ["personalize", "--profile", str(profile), "--method", "sft", "--engine", "tinker",
                                 "--model", str(tinker_server.model_dir), "--tinker-url", tinker_server.base_url,
                                 "--config", str(config), "--out", str(run)])
    assert result.exit_code == 0, (result.output, result.exception)
    manifest = json.loads(next(run.rglob("method.json")).read_text())
    assert manifest["model"]["backend"] == "tinker" and manifest["adapter"].startswith("tinker://")
    result = runner.invoke(app, ["generate", "--run", str(run), "--prompt", "Can we meet at 3?",
                                 "--max-new-tokens", str(MAX_NEW_TOKENS), "--temperature", "0"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert result.stdout.strip()
    result = runner.invoke(app, ["export", "--run", str(run), "--out", str(tmp_path / "exported"),
                                 "--format", "adapter"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert (tmp_path / "exported" / "adapter_config.json").is_file()
