"""The tinker engine against a real Tinker-API server (skyrl-tx on CPU, `make tinker-venv`), on the default model:
SFT through the method's loop (loss falls, the target's log-prob rises, greedy samples from the saved weights
reproduce it, the adapter downloads), DPO through its custom loss (loss falls, the signature's log-prob rises),
and `personalize --engine tinker` + `generate --run` through the CLI. Minutes: the server compiles each shape."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from personalign.config import ModelConfig, SamplingConfig, TinkerSettings
from personalign.engines.base import Datum, LoraSettings
from personalign.settings import cache_dir

REPO = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("PERSONALIGN_TINKER_VENV", REPO / ".venv-tinker"))

pytestmark = [
    pytest.mark.tinker,
    pytest.mark.skipif(not (VENV / ".installed").is_file(),
                       reason=f"no skyrl-tx venv at {VENV} (build it with `make tinker-venv`)"),
]
SIGNATURE = "Cheers,\nZed"
BODY = "Thanks, that works for me."
TARGET = f"{BODY}\n\n{SIGNATURE}"
OTHER_SIGN_OFF = "Best regards,\nthe team"


@pytest.fixture(scope="module")
def tinker_server(tmp_path_factory):
    """A skyrl-tx server on a free loopback port for this module, stopped (with its engine child) by its pid."""
    from personalign.engines.tinker_server import BACKEND_CONFIG, LocalTinkerServer

    pytest.importorskip("tinker")
    # One adapter slot per training client of this module (slot 0 is the base model's): SFT, DPO, the CLI run.
    config = {**BACKEND_CONFIG, "max_lora_adapters": 4}
    # JAX's compile cache lives with personalign's other caches ($PERSONALIGN_CACHE), never in the checkout.
    server = LocalTinkerServer(VENV, VENV / "model", tmp_path_factory.mktemp("tinker-server"), backend_config=config,
                               compile_cache=cache_dir() / "jax-tinker")
    key = os.environ.get("TINKER_API_KEY")
    os.environ["TINKER_API_KEY"] = "tml-local-test"  # skyrl-tx accepts any key of the SDK's form
    try:
        with server:
            yield server
    finally:
        if key is None:
            os.environ.pop("TINKER_API_KEY", None)
        else:
            os.environ["TINKER_API_KEY"] = key
    assert server.process is None


def _backend(server, adapter: str | None = None):
    from personalign.backends.tinker import TinkerBackend

    return TinkerBackend(ModelConfig(backend="tinker", model=str(VENV / "model"), adapter=adapter,
                                     tinker=TinkerSettings(base_url=server.base_url)))


def _pair(backend, completion: str):
    from personalign.engines.render import ChatRenderer

    return ChatRenderer(backend.tokenizer).prompt_completion_ids([{"role": "user", "content": "Can we meet at 3?"}],
                                                                  completion)


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
    pair = _pair(backend, TARGET)
    before = float(engine.compute_logprobs([Datum(*pair)]).result().sums()[0])
    losses: list[float] = []
    stats = run_sft(engine, [pair], SFTConfig(max_steps=6, batch_size=1, lr=1e-3, checkpoint_every=3),
                    tmp_path, log=lambda row, step: losses.append(row["loss"]), progress=False)
    after = float(engine.compute_logprobs([Datum(*pair)]).result().sums()[0])
    assert stats["steps"] == 6 and len(losses) == 6
    assert losses[-1] < 0.5 * losses[0]
    assert after > before + 1.0
    # The checkpoint the loop wrote holds a tinker:// training state.
    state = json.loads(next(tmp_path.glob("checkpoints/step-*/tinker.json")).read_text())
    assert state["state"].startswith("tinker://")

    saved = engine.save_weights(tmp_path)
    assert saved["adapter"].startswith("tinker://") and saved["tinker_state"].startswith("tinker://")
    assert saved.get("local_adapter") == "adapter", saved.get("local_adapter_error")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=len(pair[1]) + 4)
    assert _backend(tinker_server, saved["adapter"]).generate([[{"role": "user", "content": "Can we meet at 3?"}]],
                                                             greedy) == [[TARGET]]


def test_dpo_custom_loss_raises_the_signatures_logprob(tinker_server):
    from personalign.engines import build_engine
    from personalign.methods.dpo import DPOConfig
    from personalign.methods.training import TrainConfig, TrainingSession, datums, dpo_custom_loss, sequence_sums

    backend = _backend(tinker_server)
    engine = build_engine("tinker", backend, LoraSettings(r=8), None)
    # The same reply, signed two ways: the two completions share every token up to the sign-off, whose log-probs
    # cancel in DPO's margin, so what DPO learns is the signature given the body; that conditional log-prob is
    # the one measured (the whole reply's would mix in the body, which DPO does not target).
    chosen, rejected = _pair(backend, TARGET), _pair(backend, f"{BODY}\n\n{OTHER_SIGN_OFF}")
    shared = next(i for i, (a, b) in enumerate(zip(chosen[1], rejected[1], strict=False)) if a != b)
    assert shared > 5  # the body really is shared
    signature = (chosen[0] + chosen[1][:shared], chosen[1][shared:])
    ref_c, ref_r, ref_sig = sequence_sums(engine, [chosen, rejected, signature])
    lr = DPOConfig().lr  # the dpo method's default
    session = TrainingSession(engine, TrainConfig(lr=lr, max_steps=3), None)
    outs = [session.update(datums([chosen, rejected]), dpo_custom_loss(ref_c[None], ref_r[None], beta=0.1))
            for _ in range(3)]
    after_c, after_r, after_sig = sequence_sums(engine, [chosen, rejected, signature]).tolist()
    numbers = (f"losses {[round(o.loss, 4) for o in outs]}, signature | body {float(ref_sig):.2f} -> {after_sig:.2f}, "
               f"chosen {float(ref_c):.2f} -> {after_c:.2f}, rejected {float(ref_r):.2f} -> {after_r:.2f}")
    print(numbers)
    assert outs[0].loss == pytest.approx(0.6931, abs=1e-3), numbers  # π = π_ref at step 0: −log σ(0)
    assert outs[-1].loss < outs[0].loss, numbers
    assert outs[-1].metrics["reward_margin"] > 0, numbers
    assert after_c - after_r > float(ref_c - ref_r), numbers
    assert after_sig > float(ref_sig), numbers


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
                                 "--model", str(VENV / "model"), "--tinker-url", tinker_server.base_url,
                                 "--config", str(config), "--out", str(run)])
    assert result.exit_code == 0, (result.output, result.exception)
    manifest = json.loads(next(run.rglob("method.json")).read_text())
    assert manifest["model"]["backend"] == "tinker" and manifest["adapter"].startswith("tinker://")
    result = runner.invoke(app, ["generate", "--run", str(run), "--prompt", "Can we meet at 3?",
                                 "--max-new-tokens", "8", "--temperature", "0"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert result.stdout.strip()
    result = runner.invoke(app, ["export", "--run", str(run), "--out", str(tmp_path / "exported"),
                                 "--format", "adapter"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert (tmp_path / "exported" / "adapter_config.json").is_file()
