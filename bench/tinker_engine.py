"""The tinker engine on a local skyrl-tx server (JAX, CPU): seconds per SFT and per DPO step, and where time goes.

    python bench/tinker_engine.py --out bench/results/tinker.json [--steps 5] [--batch 2] [--tokens 128]

Needs `make tinker-venv`. One server with a fresh JAX compilation cache (so the first step's compile is
measured, not read from disk), LoRA r=8 on attention, the default model, a batch of --batch real chat
examples from the example profile cut to --tokens tokens. Per step (`TrainingSession.update`:
forward_backward + optim_step submitted together, then waited on): the first step (compile + run), then the
median of --steps more. Where time goes: client = building the SDK's datums and reading its outputs back
(timed directly on the same batch), plus for DPO the custom loss on the client (timed inside it); server =
the rest of the step (HTTP, queueing, the JAX forward/backward and Adam). Baseline in the same script: the
local engine on the same model, LoRA, batch and steps.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

from personalign.io import atomic_write_json
from personalign.runs import package_versions

REPO = Path(__file__).resolve().parents[1]
VENV = REPO / ".venv-tinker"


def make_pairs(tokenizer, batch: int, tokens: int) -> tuple[list, list]:
    """(chosen, rejected) pairs of the example profile's demonstrations: chosen = the demonstration, rejected =
    the same text with its sign-off replaced; each cut to `tokens` tokens."""
    from personalign.engines.render import ChatRenderer
    from personalign.profiles import load_profile

    profile = load_profile(REPO / "configs" / "profiles" / "example.yaml")
    renderer = ChatRenderer(tokenizer)
    chosen, rejected = [], []
    for i in range(batch):
        demo = profile.demonstrations[i % len(profile.demonstrations)]
        chat = [{"role": "user", "content": demo.prompt}]
        for out, text in ((chosen, demo.output), (rejected, demo.output.replace("Warmly,", "Best regards,"))):
            prompt, completion = renderer.prompt_completion_ids(chat, text)
            out.append((prompt, completion[: max(1, tokens - len(prompt))]))
    return chosen, rejected


def group_rss_gb(pid: int) -> float:
    """RSS of the server and its engine child (the server's process group)."""
    total = 0
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) == pid:
                total += proc.memory_info().rss
        except (psutil.Error, ProcessLookupError):
            continue
    return total / 2**30


def timed_steps(run_step, steps: int, on_step=None) -> dict:
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        run_step()
        times.append(time.perf_counter() - start)
        if on_step is not None:
            on_step()
    return {"first_step_s": round(times[0], 2), "median_step_s": round(statistics.median(times[1:]), 3),
            "steps_s": [round(t, 3) for t in times]}


def train_both(engine, chosen, rejected, steps: int, on_step=None) -> dict:
    """SFT steps on `chosen`, then DPO steps on (chosen, rejected) from the weights SFT left, through the
    methods' own loop pieces; the DPO custom loss's client time measured inside it."""
    from personalign.engines.base import CrossEntropy
    from personalign.methods.training import TrainConfig, TrainingSession, datums, dpo_custom_loss, sequence_sums

    session = TrainingSession(engine, TrainConfig(lr=1e-4, max_steps=10**6), None)
    sft_losses: list[float] = []
    sft = timed_steps(lambda: sft_losses.append(session.update(datums(chosen), CrossEntropy()).loss), steps, on_step)
    sft["losses"] = [round(x, 4) for x in sft_losses]
    start = time.perf_counter()
    ref_c, ref_r = sequence_sums(engine, chosen), sequence_sums(engine, rejected)
    ref_s = time.perf_counter() - start
    loss = dpo_custom_loss(ref_c, ref_r, beta=0.1)
    client = []

    def timed_fn(data, logprobs):
        t = time.perf_counter()
        out = loss.fn(data, logprobs)
        client.append(time.perf_counter() - t)
        return out

    dpo_losses: list[float] = []
    dpo = timed_steps(lambda: dpo_losses.append(session.update(datums(chosen + rejected),
                                                               type(loss)(timed_fn, name="dpo")).loss), steps, on_step)
    dpo.update(losses=[round(x, 4) for x in dpo_losses], reference_logprobs_s=round(ref_s, 2),
               client_loss_s=round(statistics.median(client[1:] or client), 4))
    return {"sft": sft, "dpo": dpo}


def client_conversion_s(engine_module, chosen, rejected, repeats: int = 20) -> dict:
    """Client-side cost per step of building the SDK's datums (SFT batch; DPO batch of chosen + rejected)."""
    from personalign.engines.base import Datum

    def build(pairs):
        data = [Datum(p, c) for p, c in pairs]
        weights = engine_module.mean_weights(data)
        return [engine_module.tinker_datum(d.prompt, d.completion, weights=w) for d, w in zip(data, weights,
                                                                                           strict=True)]

    out = {}
    for name, pairs in (("sft", chosen), ("dpo", chosen + rejected)):
        start = time.perf_counter()
        for _ in range(repeats):
            build(pairs)
        out[name] = round((time.perf_counter() - start) / repeats, 5)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "tinker.json")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--note", default="", help="what else ran on the machine (recorded with the load)")
    args = parser.parse_args()
    if not (VENV / ".installed").is_file():
        sys.exit(f"no {VENV}: build it with `make tinker-venv`")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ["TINKER_API_KEY"] = os.environ.get("TINKER_API_KEY", "tml-local-bench")

    import torch

    from personalign.backends.hf import HFBackend
    from personalign.backends.tinker import TinkerBackend
    from personalign.config import ModelConfig, TinkerSettings
    from personalign.engines import tinker as engine_module
    from personalign.engines.base import LoraSettings
    from personalign.engines.local import LocalEngine
    from personalign.engines.tinker import TinkerEngine
    from personalign.engines.tinker_server import LocalTinkerServer

    load_start = os.getloadavg()
    lora = LoraSettings(r=8, alpha=16, dropout=0.0)
    result: dict = {"settings": {"steps": args.steps, "batch": args.batch, "tokens": args.tokens, "lora_rank": 8,
                                 "model": "default (SmolLM2-135M-Instruct)"}}
    with tempfile.TemporaryDirectory(prefix="bench-tinker-") as tmp:
        server = LocalTinkerServer(VENV, VENV / "model", Path(tmp), compile_cache=None)
        start = time.perf_counter()
        server.start()
        try:
            peak = [0.0]

            def sample_rss() -> None:
                peak[0] = max(peak[0], group_rss_gb(server.process.pid))

            result["server_start_s"] = round(time.perf_counter() - start, 2)
            start = time.perf_counter()
            backend = TinkerBackend(ModelConfig(backend="tinker", model=str(VENV / "model"),
                                                tinker=TinkerSettings(base_url=server.base_url)))
            engine = TinkerEngine(backend, lora)
            result["create_training_client_s"] = round(time.perf_counter() - start, 2)
            chosen, rejected = make_pairs(backend.tokenizer, args.batch, args.tokens)
            result["tinker"] = train_both(engine, chosen, rejected, args.steps, sample_rss)
            result["server_rss_gb_peak"] = round(peak[0], 2)
        finally:
            server.stop()
    client = client_conversion_s(engine_module, chosen, rejected)
    for name in ("sft", "dpo"):
        part = result["tinker"][name]
        part["client_s_per_step"] = client[name] + part.get("client_loss_s", 0.0)
        part["server_s_per_step"] = round(part["median_step_s"] - part["client_s_per_step"], 3)
        part["first_step_compile_s"] = round(part["first_step_s"] - part["median_step_s"], 2)

    torch.manual_seed(0)
    local = LocalEngine(HFBackend(ModelConfig(dtype="fp32", device="cpu")), lora)
    result["local_baseline"] = train_both(local, chosen, rejected, args.steps)
    result["ratio_tinker_to_local"] = {
        name: round(result["tinker"][name]["median_step_s"] / result["local_baseline"][name]["median_step_s"], 2)
        for name in ("sft", "dpo")}
    result["machine"] = {"cpus": os.cpu_count(), "load_avg_1m_start": round(load_start[0], 2),
                         "load_avg_1m_end": round(os.getloadavg()[0], 2),
                         "note": "shared machine (2 cores, 4 engineers), loaded during the run; run under nice -n 10. "
                         + args.note}
    result["versions"] = package_versions()
    atomic_write_json(args.out, result)
    print(result)


if __name__ == "__main__":
    main()
