"""Run by tests/engines/test_accelerate.py under torchrun (2 CPU processes, gloo): three steps on one global batch
through the accelerate engine (CrossEntropy, PolicyLoss with a KL term, DPO's custom loss); rank 0 saves the
losses, each step's gradient and how far each trainable weight moved."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from transformers import AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import make_tiny_llama
from personalign.backends.hf import HFBackend
from personalign.config import ModelConfig
from personalign.engines.base import AdamParams, CrossEntropy, Datum, LoraSettings, PolicyLoss
from personalign.engines.local import LocalEngine, trainable_state
from personalign.methods.training import datums, dpo_custom_loss

REPLIES = ["Hi Al.\n\nCheers,\nZed", "Hello there, Bo, how are you today?", "Yo.", "Greetings to you, Cy, and all.",
           "Hey Di!", "Good morning Ed, the report is attached.", "Hi Flo, see you soon.", "Thanks, Gus."]


def main(tokenizer_dir: str, out: str, engine_name: str) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    backend = HFBackend(ModelConfig(device="cpu", dtype="fp32"), model=make_tiny_llama(tok, seed=7), tokenizer=tok)
    lora = LoraSettings(r=4, dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj"])
    if engine_name == "accelerate":
        from personalign.engines.accelerate import AccelerateEngine

        engine: LocalEngine = AccelerateEngine(backend, lora)
    else:
        engine = LocalEngine(backend, lora)
    with torch.no_grad():  # LoRA B off zero, the same on every process, so every adapter weight gets a gradient
        gen = torch.Generator().manual_seed(1)
        for name, p in engine.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    pairs = [backend.prompt_completion_ids([{"role": "user", "content": f"Greet person {i}."}], reply)
             for i, reply in enumerate(REPLIES)]
    initial = trainable_state(engine.model)
    adam = AdamParams(learning_rate=1e-2)
    grads: list[dict[str, torch.Tensor]] = []

    def step() -> None:  # keep each step's (all-reduced) gradient: Adam's update would hide a wrong scale
        grads.append({n: p.grad.detach().clone() for n, p in engine.model.named_parameters() if p.grad is not None})
        engine.optim_step(adam).result()

    losses = []
    # 1. SFT, with per-token weights on half the batch (7 rows: shards of 4 and 3 on 2 processes)
    data = [Datum(p, c, weights=[1.0 + (j % 3) for j in range(len(c))] if i % 2 else None)
            for i, (p, c) in enumerate(pairs[:7])]
    losses.append(engine.forward_backward(data, CrossEntropy()).result().loss)
    step()
    # 2. GRPO-style policy loss with β > 0 against the snapshot of the current weights
    ref = engine.snapshot().compute_logprobs(datums(pairs)).result().per_datum()
    data = [Datum(p, c, advantage=float(i % 3) - 1.0, ref_logprobs=[v - 0.1 for v in r])
            for i, ((p, c), r) in enumerate(zip(pairs, ref, strict=True))]
    policy = engine.forward_backward(data, PolicyLoss(kl_beta=0.3)).result()
    losses += [policy.loss, policy.metrics["kl"]]
    step()
    # 3. DPO: pairs (i, i + 4) straddle the two shards
    chosen, rejected = pairs[:4], pairs[4:]
    loss = dpo_custom_loss(torch.tensor([-50.0, -60.0, -20.0, -40.0]), torch.tensor([-30.0, -70.0, -50.0, -45.0]), 0.1)
    losses.append(engine.forward_backward(datums(chosen + rejected), loss).result().loss)
    step()
    if engine.is_main:
        final = trainable_state(engine.model)
        torch.save({"moved": {k: final[k] - initial[k] for k in final}, "grads": grads}, Path(out) / "weights.pt")
        (Path(out) / "losses.json").write_text(json.dumps({"losses": losses, "processes": getattr(engine, "world", 1)}))
    engine.sync()


if __name__ == "__main__":
    main(*sys.argv[1:4])
