"""`personalign serve` under load: tokens/s at 1/8/32 clients against direct batched generate, and a load test.

    python bench/serve.py --out bench/results/serve.json [--clients 1,8,32] [--requests 2] [--max-new-tokens 32]
    python bench/serve.py --load-only --out bench/results/serve_load.json

Part 1 (the default model): C clients, each sending `--requests` chat requests one after another through the
official `openai` client to the hf engine on loopback, against `backend.generate` of C prompts as one batch on
the same model object in the same process. Same prompts, same sampling (temperature 0.7, fixed
max_new_tokens); tokens are the generated tokens up to each end-of-turn on both sides. Ratio = served tokens/s
÷ direct tokens/s at the same batch; latency p50/p95 per request. With `--vllm` (needs `make vllm-venv`) the
same clients also run against vLLM's server on the same model.

Part 2 (a tiny model built here, two LoRA adapters trained here to different signatures): 50 clients for a
bounded number of requests, each naming one of the two adapters or the base model at random, then a burst of
requests far beyond a small queue with no client retries. Pass = no 5xx, every status 200 or 429, and every
200 reply was produced by the model it named (its signature word and not the other's; the base reply has neither).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

# Idle OpenMP threads sleep instead of spinning. On this shared, oversubscribed 2-core host the default (spin)
# made generation 30x slower in whichever thread created the first OpenMP team (here the server's worker one
# run, the main thread the next), so both sides of every ratio below run with it. Must precede `import torch`.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

from personalign.config import ModelConfig, SamplingConfig
from personalign.io import atomic_write_json
from personalign.runs import package_versions
from personalign.serve.config import ServeConfig
from personalign.serve.server import build_engine, running_server
from sampling import PROMPTS  # bench/sampling.py: the same prompts, so the two benchmarks measure the same work


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def client_load(url: str, model: str, clients: int, requests: int, max_new_tokens: int) -> dict[str, Any]:
    """`clients` threads, each sending `requests` requests in turn; tokens/s over the wall time of all."""
    import openai

    client = openai.OpenAI(base_url=url, api_key="bench", max_retries=0, timeout=600)
    latencies: list[float] = []
    tokens = 0

    def one(index: int) -> tuple[float, int]:
        start = time.perf_counter()
        reply = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": PROMPTS[index % len(PROMPTS)]}],
            max_tokens=max_new_tokens, temperature=0.7, top_p=0.95)
        return time.perf_counter() - start, reply.usage.completion_tokens

    def worker(c: int) -> list[tuple[float, int]]:
        return [one(c * requests + r) for r in range(requests)]

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = [x for chunk in pool.map(worker, range(clients)) for x in chunk]
    wall = time.perf_counter() - start
    latencies = [lat for lat, _ in results]
    tokens = sum(n for _, n in results)
    return {"clients": clients, "requests": len(results), "tokens": tokens, "seconds": round(wall, 2),
            "tokens_per_s": round(tokens / wall, 1), "p50_s": round(percentile(latencies, 0.5), 2),
            "p95_s": round(percentile(latencies, 0.95), 2)}


def direct(backend: Any, batch: int, repeats: int, max_new_tokens: int) -> dict[str, Any]:
    """`backend.generate` on `batch` prompts as one call, `repeats` times (the served clients' total work)."""
    convs = [[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}] for i in range(batch)]
    sampling = SamplingConfig(temperature=0.7, top_p=0.95, max_new_tokens=max_new_tokens)
    tokens, start = 0, time.perf_counter()
    for r in range(repeats):
        backend.generate(convs, sampling.model_copy(update={"seed": r}))
        tokens += sum(c for row in backend.last_token_counts for c, _ in row)
    wall = time.perf_counter() - start
    return {"batch": batch, "tokens": tokens, "seconds": round(wall, 2), "tokens_per_s": round(tokens / wall, 1)}


def throughput(args: argparse.Namespace) -> dict[str, Any]:
    config = ServeConfig(model=ModelConfig(model="default", device=args.device), port=0,
                         max_batch=max(args.clients), max_queue=1024)
    engine = build_engine(config)
    backend = engine.models["default"].backend.slot.backend
    rows = []
    with running_server(engine, config) as url:
        client_load(url, "default", 1, 1, 8)  # warm-up (first-call allocations)
        for clients in args.clients:
            calls = len(engine.batches)
            served = client_load(url, "default", clients, args.requests, args.max_new_tokens)
            batches = engine.batches[calls:]
            base = direct(backend, clients, args.requests, args.max_new_tokens)
            row = {"clients": clients, "served": served, "direct": base,
                   "ratio": round(served["tokens_per_s"] / base["tokens_per_s"], 2),
                   "mean_batch": round(statistics.mean(batches), 1), "generate_calls": len(batches)}
            print(row, file=sys.stderr)
            rows.append(row)
    result: dict[str, Any] = {"hf": rows, "dtype": str(backend.dtype)}
    if args.vllm:
        result["vllm"] = vllm_throughput(args)
    return result


def vllm_throughput(args: argparse.Namespace) -> list[dict[str, Any]]:
    from personalign.serve import vllm

    # vLLM's CPU backend reserves --gpu-memory-utilization of RAM for its KV cache (0.92 by default): 2 GiB here.
    config = ServeConfig(model=ModelConfig(model="default"), port=args.vllm_port, engine="vllm",
                         vllm_args=["--max-model-len", "2048", "--gpu-memory-utilization", "0.1"])
    process = vllm.launch(config)
    try:
        url = f"http://127.0.0.1:{args.vllm_port}/v1"
        client_load(url, "default", 1, 1, 8)
        return [client_load(url, "default", c, args.requests, args.max_new_tokens) for c in args.clients]
    finally:
        vllm.stop(process)


# ---- part 2: load and overload with two adapters -------------------------------------------------------
def load_test(args: argparse.Namespace) -> dict[str, Any]:
    import httpx
    from transformers import AutoTokenizer

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import make_tiny_llama  # the tests' tiny random llama (same vocabulary as the default model)
    from personalign.backends.default_model import ensure_default_model
    from personalign.methods.spec import resolve_personalizer
    from personalign.profiles.loading import parse_profile
    from personalign.runs import RunDir

    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    tokenizer = AutoTokenizer.from_pretrained(ensure_default_model(progress=False))
    make_tiny_llama(tokenizer).save_pretrained(root / "tiny")
    tokenizer.save_pretrained(root / "tiny")
    model = ModelConfig(model=str(root / "tiny"), device="cpu", dtype="fp32")
    signatures = {"zed": "Zed", "ann": "Ann"}
    train = {"max_steps": 40, "lr": 2e-2, "batch_size": 4, "val_fraction": 0.0, "synthetic": {"n_keep": 0},
             "lora": {"r": 8, "dropout": 0.0, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj",
                                                                 "gate_proj", "up_proj", "down_proj"]}}
    runs = []
    for key, word in signatures.items():
        profile = parse_profile({"name": f"{key} Toy", "task": "notes", "demonstrations": [
            {"prompt": p, "output": f"{word} {word} {word}"} for p in PROMPTS[:6]]})
        run = RunDir(root / f"sft-{key}")
        resolve_personalizer("sft", profile=profile, model=model, method_config=train, run_dir=run)
        runs.append(str(run.path))
    config = ServeConfig(model=model, runs=runs, port=0, max_batch=32, max_queue=args.burst_queue,
                         batch_window_ms=10)
    engine = build_engine(config)
    names = ["sft-zed", "sft-ann", "tiny"]

    def check(name: str, prompt: str, response: httpx.Response) -> str:
        if response.status_code != 200:
            return str(response.status_code)
        text = response.json()["choices"][0]["message"]["content"]
        # The tiny model's logits are nearly flat, so padding in a bigger batch can flip a greedy token
        # ("Z Zed Zed"); which model answered is told by the signature words, never by exact text.
        own = {signatures[name.removeprefix("sft-")]} if name != "tiny" else set()
        found = {word for word in signatures.values() if word in text}
        ok = found == own
        if not ok:
            print(f"wrong model: {name!r} answered {text!r}", file=sys.stderr)
        return "200" if ok else "wrong-model"

    def send(http: httpx.Client, url: str, rng: random.Random) -> str:
        name, prompt = rng.choice(names), rng.choice(PROMPTS)
        body = {"model": name, "messages": [{"role": "user", "content": prompt}], "temperature": 0, "max_tokens": 6}
        return check(name, prompt, http.post(f"{url}/chat/completions", json=body))

    def tally(outcomes: list[str]) -> dict[str, int]:
        return {k: outcomes.count(k) for k in sorted(set(outcomes))}

    with running_server(engine, config) as url, httpx.Client(timeout=120, limits=httpx.Limits(
            max_connections=args.burst)) as http:
        start = time.perf_counter()
        with ThreadPoolExecutor(args.load_clients) as pool:
            steady = list(pool.map(lambda c: [send(http, url, random.Random(c * 1000 + r))
                                              for r in range(args.load_requests)], range(args.load_clients)))
        steady_outcomes = [o for chunk in steady for o in chunk]
        steady_seconds = time.perf_counter() - start
        start = time.perf_counter()
        with ThreadPoolExecutor(args.burst) as pool:
            burst = list(pool.map(lambda i: send(http, url, random.Random(10**6 + i)), range(args.burst)))
        burst_seconds = time.perf_counter() - start
    outcomes = steady_outcomes + burst
    return {
        "steady": {"clients": args.load_clients, "requests": len(steady_outcomes), "status": tally(steady_outcomes),
                   "seconds": round(steady_seconds, 2)},
        "burst": {"requests": len(burst), "queue": args.burst_queue, "status": tally(burst),
                  "seconds": round(burst_seconds, 2)},
        "pass": all(o in ("200", "429") for o in outcomes) and "429" in burst,
        "max_batch_seen": max(engine.batches),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/serve.json"))
    parser.add_argument("--clients", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=2, help="requests per client (and direct repeats)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--vllm", action="store_true", help="also measure --engine vllm (make vllm-venv)")
    parser.add_argument("--vllm-port", type=int, default=8011)
    parser.add_argument("--vllm-only", action="store_true", help="only the vLLM engine's throughput")
    parser.add_argument("--load-only", action="store_true")
    parser.add_argument("--no-load", action="store_true", help="throughput only")
    parser.add_argument("--load-clients", type=int, default=50)
    parser.add_argument("--load-requests", type=int, default=4, help="requests per load client")
    parser.add_argument("--burst", type=int, default=200, help="simultaneous requests in the overload burst")
    parser.add_argument("--burst-queue", type=int, default=64, help="server queue during the load test")
    args = parser.parse_args()
    result: dict[str, Any] = {"command": " ".join(sys.argv), "versions": package_versions(),
                              "torch_threads": torch.get_num_threads(),
                              "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "load_avg": os.getloadavg()}
    if args.vllm_only:
        result["throughput"] = {"vllm": vllm_throughput(args)}
    elif not args.load_only:
        result["throughput"] = throughput(args)
    if not (args.no_load or args.vllm_only):
        result["load"] = load_test(args)
    atomic_write_json(args.out, result)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
