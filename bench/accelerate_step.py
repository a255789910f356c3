"""Step time of the accelerate engine on N CPU processes against one process, on the same global batch.

(Not named accelerate.py: run as a script, bench/ comes first on sys.path and would shadow the package.)

    python bench/accelerate_step.py --out bench/results/accelerate_step.json [--processes 2] [--rounds 3] [--steps 3]
        [--config configs/accelerate/deepspeed-zero2.yaml]

One LoRA SFT step (the default model, r=16 on q/k/v/o, fp32, bench/training.py's batch of 8 × 256 tokens:
`TrainingSession.update` = `forward_backward(CrossEntropy)` + `optim_step`) timed in two setups that use the
same cores: one process with every core's thread (the local engine), and N processes started the way
`accelerate launch --multi_gpu` starts them (torchrun; gloo on CPU), each with cores/N threads, each training
its shard of the same batch (the accelerate engine; each step ends with every process's gradient all-reduced).
With --config FILE (an accelerate config, e.g. DeepSpeed ZeRO-2 or FSDP2) a third setup runs the N processes with
the settings `accelerate launch --config_file FILE` gives them (key "N-config"), against the same two.
Setups alternate for --rounds rounds so a load trend hits both alike; medians over every timed step after one
warm-up step per round; ratio = N-process median / one-process median. Each round also records the first step's
loss, which must agree between setups (same global batch, same weights).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def worker(engine_name: str, steps: int, batch: int, seq: int, threads: int) -> dict:
    import torch

    from personalign.backends.hf import HFBackend
    from personalign.config import ModelConfig
    from personalign.engines import build_engine
    from personalign.engines.base import CrossEntropy, LoraSettings
    from personalign.methods.training import TrainConfig, TrainingSession, datums
    from training import make_batch  # bench/training.py: the same batch its local-engine numbers use

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    backend = HFBackend(ModelConfig(dtype="fp32", device="cpu"))
    engine = build_engine(engine_name, backend, LoraSettings(r=16, dropout=0.0))
    data = datums(make_batch(backend, batch, seq))
    session = TrainingSession(engine, TrainConfig(lr=1e-5), None)
    times, losses = [], []
    for _ in range(steps + 1):  # the first is the warm-up
        engine.sync()  # every process starts the step together: the time is the slowest process's
        start = time.perf_counter()
        losses.append(session.update(data, CrossEntropy()).loss)
        engine.sync()
        times.append(time.perf_counter() - start)
    return {"engine": engine_name, "processes": getattr(engine, "world", 1), "threads_per_process": threads,
            "step_s": times[1:], "warmup_s": times[0], "first_loss": losses[0], "is_main": engine.is_main}


def run_setup(processes: int, args: argparse.Namespace, threads: int, port: int, config: str | None = None) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE"}
    if config:
        from personalign.engines.launch import launch_env

        env.update(launch_env(config, processes))
    worker_args = [__file__, "--worker", "accelerate" if processes > 1 else "local", "--steps", str(args.steps),
                   "--batch", str(args.batch), "--seq", str(args.seq), "--threads", str(threads)]
    if processes > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                   "--master_port", str(port), *worker_args]
    else:
        command = [sys.executable, *worker_args]
    out = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{processes}-process worker failed:\n{out.stderr[-3000:]}")
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    return next(r for r in rows if r["is_main"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "accelerate_step.json"))
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round (after one warm-up)")
    parser.add_argument("--batch", type=int, default=8, help="global batch (sequences per step)")
    parser.add_argument("--seq", type=int, default=256, help="tokens per sequence")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="cores both setups share")
    parser.add_argument("--port", type=int, default=29631)
    parser.add_argument("--config", help="also time the N processes under this accelerate config (FSDP, DeepSpeed)")
    parser.add_argument("--worker", choices=["local", "accelerate"], help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = worker(args.worker, args.steps, args.batch, args.seq, args.threads)
        if result["is_main"]:  # one writer: the processes' lines would interleave on the shared stdout
            print(json.dumps(result), flush=True)
        return

    from personalign.io import atomic_write_json
    from personalign.runs import package_versions

    n = args.processes
    # key: (processes, threads per process, accelerate config)
    setups = {"1": (1, max(1, args.cores), None), str(n): (n, max(1, args.cores // n), None)}
    if args.config:
        setups[f"{n}-config"] = (n, max(1, args.cores // n), args.config)
    rounds: list[dict] = []
    for r in range(args.rounds):
        order = list(setups) if r % 2 == 0 else list(setups)[::-1]
        row = {}
        for i, key in enumerate(order):
            processes, threads, config = setups[key]
            row[key] = run_setup(processes, args, threads, args.port + 10 * r + i, config)
        rounds.append({key: row[key] for key in setups})
        print(f"round {r}: " + ", ".join(f"{key} {statistics.median(row[key]['step_s']):.2f} s/step"
                                         for key in setups), flush=True)
    medians = {key: statistics.median(s for rd in rounds for s in rd[key]["step_s"]) for key in setups}
    one, many = medians["1"], medians[str(n)]
    result = {
        "what": __doc__.splitlines()[0], "cores": args.cores, "batch": args.batch, "seq": args.seq,
        "steps_per_round": args.steps, "rounds": rounds, "versions": package_versions(),
        "config": args.config, "median_step_s": medians,
        f"ratio_{n}_over_1": many / one,
        **({f"ratio_{n}_config_over_1": medians[f"{n}-config"] / one,
            f"ratio_{n}_config_over_{n}": medians[f"{n}-config"] / many} if args.config else {}),
        "first_loss_max_rel_diff": max(abs(rd[key]["first_loss"] - rd["1"]["first_loss"]) / abs(rd["1"]["first_loss"])
                                       for rd in rounds for key in setups),
        "load_avg_1m_at_end": os.getloadavg()[0],
    }
    atomic_write_json(args.out, result)
    extra = f", {n} processes under {args.config} {medians[f'{n}-config']:.3f}" if args.config else ""
    print(f"median s/step: 1 process {one:.3f}, {n} processes {many:.3f}{extra}, ratio {many / one:.2f}; "
          f"wrote {args.out}")


if __name__ == "__main__":
    main()
