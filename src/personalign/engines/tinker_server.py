"""A local Tinker-API server (skyrl-tx, JAX on CPU) for testing and measuring the `tinker` engine offline.

skyrl-tx implements the Tinker service's HTTP API; it runs from its own venv (`make tinker-venv`: it pins
transformers < 5, personalign needs 5). This module prepares what it needs and runs it:
- `prepare_model(src, dst)`: a copy of a model folder that transformers 4 reads (the source folder is never
  touched; the weights are symlinked, not copied);
- `LocalTinkerServer`: starts `python -m tx.tinker.api` in its own process group on 127.0.0.1, waits for
  `/api/v1/healthz`, and on exit stops the server and the engine process it spawned by the group's id.

`python -m personalign.engines.tinker_server prepare DST` prepares the default model (the make target uses it).

Where skyrl-tx 0.3.0 differs from Tinker (read from its code; what the tests here can and cannot show):
- it averages the accumulated gradient over the batch's sequences where Tinker sums (Adam hardly minds: only
  eps and the clipping threshold see the scale);
- its LoRA takes only the rank and seed (alpha 32, attention and MLP, never the unembedding, whatever the
  switches say), and `ppo` clips at 0.8/1.2 whatever the thresholds sent;
- it loads sampler weights into the training adapter's own slot, so sampling an *older* snapshot while
  training (DITTO's and GRPO's π_ref) would overwrite the trained weights; SFT, DPO and sampling the
  current or final weights are unaffected;
- sampler paths are `tinker://RUN/NAME` (Tinker: `tinker://RUN/sampler_weights/NAME`).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import TracebackType

from personalign.errors import PersonalignError
from personalign.io import atomic_dir
from personalign.processes import start_group, stop_group

# Defaults for a 2-core, 24 GB machine: skyrl-tx's own defaults (many adapters, long sampling batches) were
# OOM-killed at 23.6 GB; these keep the server near 4 GB RSS with the default 135M model.
BACKEND_CONFIG = {"max_lora_adapters": 2, "max_lora_rank": 8, "sample_max_num_sequences": 4}
MARKER = "personalign-tinker-model.json"


def prepare_model(src: Path, dst: Path) -> Path:
    """`dst`: `src` readable by transformers 4 (skyrl-tx's pin): a top-level `rope_theta` (transformers 5 keeps
    it only under `rope_parameters`) and `tokenizer_class: GPT2TokenizerFast` (5's `TokenizersBackend` is
    unknown to 4). Same tokenizer.json and chat template, so token ids are identical. Idempotent."""
    src, dst = Path(src).resolve(), Path(dst)
    if (dst / MARKER).is_file() and json.loads((dst / MARKER).read_text())["source"] == str(src):
        return dst
    if not (src / "config.json").is_file():
        raise PersonalignError(f"{src}: no config.json; pass a Hugging Face model folder")
    with atomic_dir(dst) as tmp:
        for item in src.iterdir():
            if item.suffix == ".safetensors":
                (tmp / item.name).symlink_to(item)
            elif item.is_file() and item.name not in ("config.json", "tokenizer_config.json"):
                shutil.copy2(item, tmp / item.name)
        config = json.loads((src / "config.json").read_text(encoding="utf-8"))
        rope = config.get("rope_parameters") or {}
        if "rope_theta" not in config and "rope_theta" in rope:
            config["rope_theta"] = rope["rope_theta"]
        (tmp / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
        tok_path = src / "tokenizer_config.json"
        tok = json.loads(tok_path.read_text(encoding="utf-8")) if tok_path.is_file() else {}
        if tok.get("tokenizer_class") in (None, "TokenizersBackend"):
            tok["tokenizer_class"] = "GPT2TokenizerFast"
        template = src / "chat_template.jinja"
        if template.is_file() and "chat_template" not in tok:
            tok["chat_template"] = template.read_text(encoding="utf-8")
        (tmp / "tokenizer_config.json").write_text(json.dumps(tok, indent=2), encoding="utf-8")
        (tmp / MARKER).write_text(json.dumps({"source": str(src)}), encoding="utf-8")
    return dst


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def healthy(base_url: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/api/v1/healthz", timeout=timeout_s) as response:
            return response.status == 200
    except OSError:
        return False


class LocalTinkerServer:
    """skyrl-tx's Tinker API on 127.0.0.1 from `venv`, serving `model_dir` (a `prepare_model` folder).

    The server starts its engine as `uv run ... -m tx.tinker.engine`; the venv's `bin/uv` (a shim the make
    target writes) runs that module with the venv's python, so `bin/` goes first on PATH.
    """

    def __init__(self, venv: Path, model_dir: Path, workdir: Path, port: int | None = None,
                 backend_config: dict[str, int] | None = None, startup_timeout_s: float = 300.0,
                 compile_cache: Path | None = None):
        self.venv = Path(venv)
        self.model_dir = Path(model_dir)
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.backend_config = backend_config or BACKEND_CONFIG
        self.startup_timeout_s = startup_timeout_s
        self.compile_cache = compile_cache  # JAX's persistent compilation cache: later servers skip the compile
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / "server.log"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [str(self.venv / "bin" / "python"), "-m", "tx.tinker.api", "--base-model", str(self.model_dir),
                "--host", "127.0.0.1", "--port", str(self.port),
                "--database-url", f"sqlite:///{self.workdir / 'tinker.db'}",
                "--checkpoints-base", str(self.workdir / "checkpoints"),
                "--backend-config", json.dumps(self.backend_config)]

    def start(self) -> LocalTinkerServer:
        python = self.venv / "bin" / "python"
        if not python.is_file() or not (self.venv / "bin" / "uv").is_file():
            raise PersonalignError(f"{self.venv}: no skyrl-tx venv; build it with `make tinker-venv`")
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "JAX_PLATFORMS": "cpu", "PATH": f"{self.venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
               "OMP_WAIT_POLICY": "PASSIVE"}
        env.pop("PYTHONPATH", None)  # personalign's src must not shadow the venv's packages
        if self.compile_cache is not None:
            env["JAX_COMPILATION_CACHE_DIR"] = str(self.compile_cache)
        with open(self.log_path, "ab") as log:
            # Own process group: the engine child is stopped with the server, by the group's id.
            self.process = start_group(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env,
                                       cwd=self.workdir)
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-800:]
                self.process = None
                raise PersonalignError(f"skyrl-tx server exited at startup (log {self.log_path}): {tail!r}")
            if healthy(self.base_url):
                return self
            time.sleep(1.0)
        self.stop()
        raise PersonalignError(f"skyrl-tx server not healthy after {self.startup_timeout_s:.0f} s "
                               f"(log {self.log_path})")

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM to the server's process group (server and engine), SIGKILL after `timeout_s`."""
        if self.process is None:
            return
        stop_group(self.process, timeout_s)
        self.process = None

    def __enter__(self) -> LocalTinkerServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def main(argv: list[str]) -> None:
    if len(argv) != 2 or argv[0] != "prepare":
        raise SystemExit("usage: python -m personalign.engines.tinker_server prepare DST")
    from personalign.backends.default_model import ensure_default_model

    print(prepare_model(ensure_default_model(), Path(argv[1])))


if __name__ == "__main__":
    main(sys.argv[1:])
