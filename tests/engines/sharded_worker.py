"""Run by tests/engines/test_accelerate.py: the accelerate engine under FSDP2 or DeepSpeed (2 CPU processes on gloo,
with the settings `accelerate launch` takes from configs/accelerate/fsdp.yaml or deepspeed-zero2.yaml) or the
local engine, on one global batch. Starts from the same LoRA weights (a checkpoint the test wrote, loaded through
`load_state`), then SFT with clipping, SFT accumulated over two calls, a policy loss against a snapshot, a
checkpoint, DPO's custom loss, greedy sampling, the adapter, and a resume of the DPO step from the checkpoint.
Rank 0 writes what it saw into OUT."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import make_tiny_llama
from personalign.backends.hf import HFBackend
from personalign.config import ModelConfig, SamplingConfig
from personalign.engines.base import AdamParams, CrossEntropy, Datum, LoraSettings, PolicyLoss
from personalign.engines.local import LocalEngine
from personalign.methods.training import datums, dpo_custom_loss

REPLIES = ["Hi Al.\n\nCheers,\nZed", "Hello there, Bo, how are you today?", "Yo.", "Greetings to you, Cy, and all.",
           "Hey Di!", "Good morning Ed, the report is attached.", "Hi Flo, see you soon.", "Thanks, Gus."]
LORA = LoraSettings(r=4, dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj"])


def build(tokenizer_dir: str, engine_name: str) -> tuple[HFBackend, LocalEngine]:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    # Generation batches of 1: the two processes' shards (2 and 1 prompts) would run a different number of
    # sharded forwards unless the engine pads them to the same length.
    backend = HFBackend(ModelConfig(device="cpu", dtype="fp32", batch_size=1), model=make_tiny_llama(tok, seed=7),
                        tokenizer=tok)
    if engine_name in ("fsdp", "deepspeed"):
        from personalign.engines.accelerate import AccelerateEngine

        engine: LocalEngine = AccelerateEngine(backend, LORA, logprob_batch_size=2)
        assert getattr(engine, engine_name)  # really sharded / partitioned, not DDP
    else:
        engine = LocalEngine(backend, LORA, logprob_batch_size=2)
    return backend, engine


def full_grads(engine: LocalEngine) -> dict[str, torch.Tensor]:
    """Each trainable weight's whole gradient (sharded ones gathered: every process must call this)."""
    out = {}
    if getattr(engine, "deepspeed", False):  # ZeRO reduces the gradients inside its step: none to read before
        return out
    for name, p in engine.model.named_parameters():
        if p.grad is not None:
            grad = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
            out[name] = grad.detach().clone()
    return out


def main(tokenizer_dir: str, init: str, out: str, engine_name: str) -> None:
    backend, engine = build(tokenizer_dir, engine_name)
    engine.load_state(Path(init), optimizer=False)  # the test's LoRA weights (B off zero) on every process
    out_dir = Path(out)
    pairs = [backend.prompt_completion_ids([{"role": "user", "content": f"Greet person {i}."}], reply)
             for i, reply in enumerate(REPLIES)]
    adam = AdamParams(learning_rate=1e-2, grad_clip_norm=0.05)  # the clip binds (the norm is ~0.1-1)
    record: dict[str, Any] = {"losses": [], "grad_norms": [], "processes": getattr(engine, "world", 1)}
    grads: list[dict[str, torch.Tensor]] = []

    def step() -> None:
        grads.append(full_grads(engine))
        record["grad_norms"].append(engine.optim_step(adam).result()["grad_norm"])

    # 1. SFT with per-token weights on half the batch (7 rows: shards of 4 and 3)
    data = [Datum(p, c, weights=[1.0 + (j % 3) for j in range(len(c))] if i % 2 else None)
            for i, (p, c) in enumerate(pairs[:7])]
    record["losses"].append(engine.forward_backward(data, CrossEntropy()).result().loss)
    step()
    # 1b. gradient accumulation: two forward_backward calls (4 rows each: shards of 2 and 2), one optim_step; their
    # gradients must add up (DeepSpeed's default micro-step counting would keep only the second's)
    for chunk in (pairs[:4], pairs[4:]):
        record["losses"].append(engine.forward_backward(datums(chunk), CrossEntropy()).result().loss)
    step()
    # 2. policy loss with β > 0 against a snapshot; π_ref scored on 5 rows in batches of 2 (shards of 3 and 2:
    # 2 and 1 batches unless padded)
    ref = engine.snapshot().compute_logprobs(datums(pairs[:5])).result().per_datum()
    record["ref_logprobs"] = ref
    data = [Datum(p, c, advantage=float(i % 3) - 1.0, ref_logprobs=[v - 0.1 for v in r])
            for i, ((p, c), r) in enumerate(zip(pairs[:5], ref, strict=True))]
    policy = engine.forward_backward(data, PolicyLoss(kl_beta=0.3)).result()
    record["losses"] += [policy.loss, policy.metrics["kl"]]
    step()
    engine.save_state(out_dir / "ckpt")  # every process joins the gather; rank 0 writes
    engine.sync()

    # 3. DPO: pairs (i, i + 4) straddle the two shards
    def dpo_step() -> float:
        loss = dpo_custom_loss(torch.tensor([-50.0, -60.0, -20.0, -40.0]),
                               torch.tensor([-30.0, -70.0, -50.0, -45.0]), 0.1)
        value = engine.forward_backward(datums(pairs[:4] + pairs[4:]), loss).result().loss
        step()
        return value

    record["losses"].append(dpo_step())
    engine.save_state(out_dir / "final")
    # greedy samples of 3 prompts (shards of 2 and 1)
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=6)
    record["samples"] = [[s.tokens for s in row] for row in engine.sample([p for p, _ in pairs[:3]], greedy).result()]
    record["manifest"] = engine.save_weights(out_dir)
    # resume: back to the checkpoint (weights, Adam moments, RNG), the DPO step again
    engine.load_state(out_dir / "ckpt")
    record["resumed_loss"] = dpo_step()
    engine.save_state(out_dir / "resumed")
    engine.sync()
    if getattr(engine, "is_main", True):
        torch.save(grads, out_dir / "grads.pt")
        (out_dir / "record.json").write_text(json.dumps(record))
    engine.sync()


if __name__ == "__main__":
    main(*sys.argv[1:5])
