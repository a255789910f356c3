"""The `tinker` engine: the training protocol on a Tinker-API service (Tinker itself, or a local skyrl-tx server).

The official `tinker` SDK (the `tinker` extra) carries every call; this module only converts between the
protocol's types and the SDK's. How each call maps:
- `CrossEntropy` → the built-in `cross_entropy`, a weighted *sum*: the weights are scaled by 1 / Σw over the
  batch so it equals the protocol's weighted mean;
- `CustomLoss` (DPO, DITTO) → `forward_backward_custom`: one forward for the per-token log-probs, the loss and
  its gradient on the client, then a backward with the gradient as cross-entropy weights;
- `PolicyLoss` → the built-in `importance_sampling` (or `ppo` with `clip_epsilon`) when every datum has its
  sampling log-probs and there is no KL term; the advantage A of a sequence of n tokens in a batch of N goes
  to each token as A / (n·N), the protocol's sequence-then-batch mean. Otherwise (on-policy data, or β > 0:
  no built-in has the KL term) it runs as a custom loss of `policy_loss`, exact, at one extra forward;
- `optim_step` → Tinker's AdamW with the same parameters; `compute_logprobs` → a `forward` at the current
  weights; `sample`, `snapshot` → sampling clients from weights saved for sampling (`tinker://` paths);
- `save_state` / `load_state` → Tinker checkpoints (with or without the optimizer), their paths in a JSON file
  in the checkpoint folder; `save_weights` → sampler weights, whose `tinker://` path the run manifest records
  (`generate --run` samples from it), and the LoRA adapter downloaded beside it where the service offers the
  archive (`export --format adapter`).
Requests are submitted at call time (the SDK orders them), so forward_backward and optim_step pipeline; the
futures returned here resolve from the SDK's on a single worker thread. Tinker's LoRA has no alpha and no
dropout; the adapter's shape is its rank and which layers it trains (attention, MLP, unembedding).
"""

from __future__ import annotations

import importlib.util
import io
import json
import tarfile
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import torch

from personalign.config import SamplingConfig
from personalign.engines.base import (
    AdamParams,
    CrossEntropy,
    CustomLoss,
    Datum,
    ForwardBackwardOutput,
    LoraSettings,
    Loss,
    PolicyLoss,
    SampledSequence,
    SamplingClient,
    TokenLogprobs,
    TrainingEngine,
    policy_loss,
)
from personalign.errors import PersonalignError
from personalign.io import atomic_dir, atomic_write_json

T = TypeVar("T")
U = TypeVar("U")

SCHEME = "tinker://"
DEFAULT_URL = "https://tinker.thinkingmachines.dev/services/tinker-prod"  # the SDK's own default
STATE_FILE = "tinker.json"
ATTENTION = {"q_proj", "k_proj", "v_proj", "o_proj"}
MLP = {"gate_proj", "up_proj", "down_proj"}
UNEMBED = {"lm_head"}


# ---- pure conversions (unit-tested without a server) --------------------------------------------
def target_weights(prompt: Sequence[int], completion_weights: Sequence[float]) -> list[float]:
    """Weights over the shifted targets tokens[1:]: 0 on the prompt's, the completion's weights after."""
    if not prompt:
        raise PersonalignError("tinker engine: a datum needs at least one prompt token (the first token is never "
                               "a target)")
    return [0.0] * (len(prompt) - 1) + [float(w) for w in completion_weights]


def mean_weights(data: Sequence[Datum]) -> list[list[float]]:
    """Each datum's completion weights divided by the batch's Σw: Tinker's weighted sum becomes our mean."""
    raw = []
    for i, d in enumerate(data):
        w = d.weights if d.weights is not None else [1.0] * len(d.completion)
        if len(w) != len(d.completion):
            raise PersonalignError(f"datum {i}: {len(w)} weights for {len(d.completion)} completion tokens")
        raw.append([float(x) for x in w])
    total = sum(sum(w) for w in raw)
    if total <= 0:
        raise PersonalignError("forward_backward: the batch's weights sum to 0; nothing to train on")
    return [[x / total for x in w] for w in raw]


def policy_advantages(data: Sequence[Datum]) -> list[list[float]]:
    """Per-token advantages A / (n·N): Tinker's summed importance-sampling loss then equals the protocol's
    mean over each completion's n tokens and over the N completions."""
    n_data = len(data)
    return [[d.advantage / (len(d.completion) * n_data)] * len(d.completion) for d in data]


def tinker_datum(prompt: Sequence[int], completion: Sequence[int], **per_target: Sequence[float]) -> Any:
    """A `tinker.Datum`: input tokens[:-1], target tokens[1:], and per-target inputs given per *completion*
    token (weights, advantages, logprobs), zero-filled over the prompt's targets."""
    from tinker import types

    tokens = [*prompt, *completion]
    inputs: dict[str, Any] = {"target_tokens": tokens[1:]}
    for key, values in per_target.items():
        if len(values) != len(completion):
            raise PersonalignError(f"tinker datum: {len(values)} {key} for {len(completion)} completion tokens")
        inputs[key] = target_weights(prompt, values)
    return types.Datum(model_input=types.ModelInput.from_ints(tokens[:-1]), loss_fn_inputs=inputs)


def completion_part(values: Sequence[float], completion_len: int) -> list[float]:
    """The completion's entries of per-target values (the last `completion_len` targets)."""
    return [float(v) for v in values[len(values) - completion_len:]]


def right_aligned(rows: Sequence[torch.Tensor]) -> TokenLogprobs:
    """Per-datum 1-D tensors stacked right-aligned (as `engines.local.token_logprobs` lays them out), keeping
    their autograd graph, with the mask of real entries."""
    keep = max((r.shape[0] for r in rows), default=0)
    values = torch.stack([torch.nn.functional.pad(r.float(), (keep - r.shape[0], 0)) for r in rows]) if rows \
        else torch.zeros((0, 0))
    mask = torch.zeros(values.shape, dtype=torch.bool)
    for i, r in enumerate(rows):
        mask[i, keep - r.shape[0]:] = True
    return TokenLogprobs(values, mask)


def lora_layers(settings: LoraSettings) -> dict[str, bool]:
    """Tinker's LoRA switches from the adapter's target modules (it trains whole layer kinds, not modules)."""
    if not settings.enabled:
        raise PersonalignError("lora.enabled: false (full fine-tuning) is not offered by Tinker; the tinker engine "
                               "trains LoRA adapters only")
    targets = set(settings.target_modules)
    unknown = targets - ATTENTION - MLP - UNEMBED
    if unknown:
        raise PersonalignError(f"lora.target_modules: {sorted(unknown)} cannot be chosen on Tinker; it trains "
                               f"attention ({sorted(ATTENTION)}), MLP ({sorted(MLP)}) and lm_head layers as a whole")
    return {"train_attn": bool(targets & ATTENTION), "train_mlp": bool(targets & MLP),
            "train_unembed": bool(targets & UNEMBED)}


def sampling_params(sampling: SamplingConfig, stop_ids: Sequence[int]) -> Any:
    """Tinker's SamplingParams; generation stops on the end-of-turn token ids (else it runs past the turn)."""
    from tinker import types

    if sampling.repetition_penalty != 1.0:
        raise PersonalignError("sampling.repetition_penalty: Tinker's sampler has none; set it to 1.0 with the "
                               "tinker engine or backend")
    return types.SamplingParams(max_tokens=sampling.max_new_tokens, temperature=sampling.temperature,
                                top_p=sampling.top_p, seed=sampling.seed, stop=list(stop_ids))


def to_sampled(tokens: Sequence[int], stop_reason: str, stop_ids: Sequence[int]) -> SampledSequence:
    """A protocol sample: the end-of-turn token the sampler stopped on is dropped."""
    out = list(tokens)
    if stop_reason == "stop" and out and out[-1] in stop_ids:
        out = out[:-1]
    return SampledSequence(out, "stop" if stop_reason == "stop" else "length")


# ---- connecting ---------------------------------------------------------------------------------
def check_service(base_url: str | None, api_key_env: str = "TINKER_API_KEY",
                  timeout_s: float = 10.0) -> tuple[str, str]:
    """(service URL, API key) once the key is set and the service answers its health check, checked quickly
    before anything heavy; each failure is one line saying what to fix."""
    import os

    if importlib.util.find_spec("tinker") is None:
        raise PersonalignError("the tinker engine needs the Tinker SDK: pip install 'personalign[tinker]' "
                               "(tinker==0.13.1)")
    key = os.environ.get(api_key_env, "")
    if not key:
        raise PersonalignError(f"{api_key_env} is not set: export your Tinker API key (a local skyrl-tx server "
                               "accepts any key starting with 'tml-')")
    if not key.startswith("tml-"):
        raise PersonalignError(f"{api_key_env}: a Tinker API key starts with 'tml-'; check the value")
    url = (base_url or os.environ.get("TINKER_BASE_URL") or DEFAULT_URL).rstrip("/")
    try:
        with urllib.request.urlopen(f"{url}/api/v1/healthz", timeout=timeout_s) as response:
            status = response.status
    except OSError as exc:
        raise PersonalignError(f"Tinker service at {url} is unreachable ({exc}); start it (local server: see "
                               "README, `make tinker-venv`) or fix --tinker-url / model.tinker.base_url") from None
    if status != 200:
        raise PersonalignError(f"Tinker service at {url}: health check answered {status}")
    return url, key


def connect(base_url: str | None, api_key_env: str = "TINKER_API_KEY", timeout_s: float = 10.0) -> Any:
    """A `tinker.ServiceClient` for the checked service (`check_service`)."""
    import tinker

    url, key = check_service(base_url, api_key_env, timeout_s)
    return tinker.ServiceClient(base_url=url, api_key=key)


def stop_token_ids(tokenizer: Any) -> list[int]:
    """End-of-turn ids: the tokenizer's eos and, for chat templates that end turns differently, `<|im_end|>`
    / `<|eot_id|>` / `<|end|>` when the vocabulary has them."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    vocab = tokenizer.get_vocab()
    ids |= {vocab[t] for t in ("<|im_end|>", "<|eot_id|>", "<|end|>") if t in vocab}
    return sorted(ids)


# ---- futures ------------------------------------------------------------------------------------
class _Resolver:
    """Resolves protocol futures from the SDK's on one worker thread, in submission order."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tinker-futures")

    def then(self, source: Any, fn: Callable[[Any], U]) -> Future[U]:
        return self.pool.submit(lambda: fn(source.result()))

    def all(self, sources: Sequence[Any], fn: Callable[[list[Any]], U]) -> Future[U]:
        return self.pool.submit(lambda: fn([s.result() for s in sources]))


def _logprob_tensors(output: Any, data: Sequence[Datum]) -> list[torch.Tensor]:
    """The completion part of each datum's per-target log-probs from a forward(_backward) output."""
    return [torch.tensor(completion_part(o["logprobs"].data, len(d.completion)))
            for o, d in zip(output.loss_fn_outputs, data, strict=True)]


class TinkerSampler(SamplingClient):
    """Sampling and scoring through a `tinker.SamplingClient` (fixed weights: a saved path or the base)."""

    def __init__(self, client: Any, stop_ids: Sequence[int], resolver: _Resolver):
        self.client = client
        self.stop_ids = list(stop_ids)
        self.resolver = resolver

    def sample(self, prompts: Sequence[list[int]], sampling: SamplingConfig,
               progress: bool = False) -> Future[list[list[SampledSequence]]]:
        from tinker import types

        params = sampling_params(sampling, self.stop_ids)
        futures = [self.client.sample(types.ModelInput.from_ints(list(p)), sampling.n, params) for p in prompts]
        return self.resolver.all(futures, lambda responses: [
            [to_sampled(s.tokens, s.stop_reason, self.stop_ids) for s in r.sequences] for r in responses])

    def compute_logprobs(self, data: Sequence[Datum]) -> Future[TokenLogprobs]:
        from tinker import types

        futures = [self.client.compute_logprobs(types.ModelInput.from_ints([*d.prompt, *d.completion]))
                   for d in data]
        return self.resolver.all(futures, lambda rows: right_aligned(
            [torch.tensor(completion_part(r, len(d.completion))) for r, d in zip(rows, data, strict=True)]))


class TinkerEngine(TrainingEngine):
    """A LoRA training client on the service, for the base model `backend.base_model` (a `TinkerBackend`)."""

    name = "tinker"

    def __init__(self, backend: Any, lora: LoraSettings, init_adapter: str | None = None):
        self.backend = backend
        self.service = backend.service
        self.stop_ids = stop_token_ids(backend.tokenizer)
        self.resolver = _Resolver()
        if init_adapter:
            self.client = self.service.create_training_client_from_state(resolve_state(init_adapter))
        else:
            self.client = self.service.create_lora_training_client(
                base_model=backend.base_model, rank=lora.r, seed=0, **lora_layers(lora))
        self._saves = 0
        self._current: TinkerSampler | None = None  # a sampler at the current weights, until they change

    def _name(self, kind: str) -> str:
        self._saves += 1
        return f"{kind}-{self._saves:06d}"

    # ---- training calls ---------------------------------------------------------------------------
    def forward_backward(self, data: Sequence[Datum], loss: Loss) -> Future[ForwardBackwardOutput]:
        if not data:
            raise PersonalignError("forward_backward: empty batch")
        self._current = None
        if isinstance(loss, CrossEntropy):
            weights = mean_weights(data)
            tdata = [tinker_datum(d.prompt, d.completion, weights=w) for d, w in zip(data, weights, strict=True)]
            return self.resolver.then(self.client.forward_backward(tdata, "cross_entropy"),
                                      lambda out: _ce_output(out, data, weights))
        if isinstance(loss, PolicyLoss) and builtin_policy(data, loss):
            tdata = [tinker_datum(d.prompt, d.completion, advantages=a, logprobs=d.sampling_logprobs or [])
                     for d, a in zip(data, policy_advantages(data), strict=True)]
            config = None
            name = "importance_sampling"
            if loss.clip_epsilon is not None:
                name = "ppo"
                config = {"clip_low_threshold": 1 - loss.clip_epsilon, "clip_high_threshold": 1 + loss.clip_epsilon}
            return self.resolver.then(self.client.forward_backward(tdata, name, config),
                                      lambda out: _policy_output(out, data, loss))
        fn = loss.fn if isinstance(loss, CustomLoss) else _policy_as_custom(loss)
        if not isinstance(loss, CustomLoss | PolicyLoss):
            raise PersonalignError(f"unknown loss {loss!r}; use CrossEntropy, PolicyLoss or CustomLoss")
        tdata = [tinker_datum(d.prompt, d.completion, weights=[1.0] * len(d.completion)) for d in data]
        sums: list[float] = []

        def custom(_tdata: list[Any], logprobs: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
            parts = [lp[lp.shape[0] - len(d.completion):] for lp, d in zip(logprobs, data, strict=True)]
            token_logprobs = right_aligned(parts)
            sums.extend(token_logprobs.sums().detach().tolist())
            value, metrics = fn(data, token_logprobs)
            return value, {**metrics, "loss": float(value.detach())}

        # Blocks for the forward only (the loss needs its log-probs); the backward is submitted when this returns,
        # before any later optim_step, so the two still pipeline.
        backward = self.client.forward_backward_custom(tdata, custom)

        def finish(out: Any) -> ForwardBackwardOutput:
            metrics = {k: float(v) for k, v in out.metrics.items() if ":" not in k}
            return ForwardBackwardOutput(metrics.pop("loss"), sums, metrics)

        return self.resolver.then(backward, finish)

    def forward(self, data: Sequence[Datum], loss: Loss) -> Future[ForwardBackwardOutput]:
        if not isinstance(loss, CrossEntropy):
            # A custom or policy loss without a gradient: evaluate it on the current weights' log-probs.
            fn = loss.fn if isinstance(loss, CustomLoss) else _policy_as_custom(loss)  # type: ignore[union-attr]

            def evaluate(lp: TokenLogprobs) -> ForwardBackwardOutput:
                value, metrics = fn(data, lp)
                return ForwardBackwardOutput(float(value), lp.sums().tolist(), dict(metrics))

            return self.resolver.then(self.compute_logprobs(data), evaluate)
        weights = mean_weights(data)
        tdata = [tinker_datum(d.prompt, d.completion, weights=w) for d, w in zip(data, weights, strict=True)]
        return self.resolver.then(self.client.forward(tdata, "cross_entropy"),
                                  lambda out: _ce_output(out, data, weights))

    def optim_step(self, params: AdamParams) -> Future[dict[str, float]]:
        from tinker import types

        self._current = None
        adam = types.AdamParams(learning_rate=params.learning_rate, beta1=params.beta1, beta2=params.beta2,
                                eps=params.eps, weight_decay=params.weight_decay,
                                grad_clip_norm=params.grad_clip_norm)
        return self.resolver.then(self.client.optim_step(adam),
                                  lambda out: {k: float(v) for k, v in (out.metrics or {}).items()})

    # ---- sampling and scoring ---------------------------------------------------------------------
    def _sampler_at(self, path: str) -> TinkerSampler:
        return TinkerSampler(self.service.create_sampling_client(model_path=path), self.stop_ids, self.resolver)

    def snapshot(self) -> SamplingClient:
        return self._sampler_at(self.client.save_weights_for_sampler(self._name("snapshot")).result().path)

    def sample(self, prompts: Sequence[list[int]], sampling: SamplingConfig,
               progress: bool = False) -> Future[list[list[SampledSequence]]]:
        if self._current is None:  # weights changed since the last sample: save them once for sampling
            self._current = self.snapshot()  # type: ignore[assignment]
        assert self._current is not None
        return self._current.sample(prompts, sampling, progress)

    def compute_logprobs(self, data: Sequence[Datum]) -> Future[TokenLogprobs]:
        # A forward at the current weights: exact, and no weights need saving for it.
        tdata = [tinker_datum(d.prompt, d.completion, weights=[0.0] * len(d.completion)) for d in data]
        return self.resolver.then(self.client.forward(tdata, "cross_entropy"),
                                  lambda out: right_aligned(_logprob_tensors(out, data)))

    # ---- persistence ------------------------------------------------------------------------------
    def save_state(self, folder: Path, optimizer: bool = True) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = self.client.save_state(self._name("state")).result().path  # Tinker saves the optimizer with it
        atomic_write_json(folder / STATE_FILE, {"state": path, "optimizer": optimizer})
        return folder

    def load_state(self, folder: Path, optimizer: bool = True) -> None:
        record = json.loads((Path(folder) / STATE_FILE).read_text(encoding="utf-8"))
        with_optimizer = optimizer and record.get("optimizer", True)
        load = self.client.load_state_with_optimizer if with_optimizer else self.client.load_state
        load(record["state"]).result()
        self._current = None

    def save_weights(self, folder: Path) -> dict[str, Any]:
        """Manifest: `adapter` = the sampler weights' tinker:// path, `tinker_state` = a training checkpoint
        (for continuing, e.g. DPO from this SFT), `local_adapter` = the LoRA downloaded into `folder/adapter/`
        when the service serves checkpoint archives."""
        sampler = self.client.save_weights_for_sampler(self._name("weights")).result().path
        state = self.client.save_state(self._name("final")).result().path
        saved: dict[str, Any] = {"adapter": sampler, "tinker_state": state}
        target = Path(folder) / "adapter"
        try:
            download_adapter(self.service, sampler, target)
            saved["local_adapter"] = "adapter"
        except PersonalignError as exc:
            saved["local_adapter_error"] = str(exc)
        return saved


def builtin_policy(data: Sequence[Datum], loss: PolicyLoss) -> bool:
    """Whether Tinker's importance_sampling / ppo loss computes `loss` exactly on `data`."""
    return loss.kl_beta == 0 and all(d.sampling_logprobs is not None and len(d.sampling_logprobs) == len(d.completion)
                                     for d in data)


def _policy_as_custom(loss: PolicyLoss) -> Callable[[Sequence[Datum], TokenLogprobs], tuple[torch.Tensor, dict]]:
    def fn(data: Sequence[Datum], lp: TokenLogprobs) -> tuple[torch.Tensor, dict[str, float]]:
        if loss.kl_beta > 0 and any(d.ref_logprobs is None for d in data):
            raise PersonalignError("PolicyLoss with kl_beta > 0 needs every datum's ref_logprobs")
        advantages = torch.tensor([d.advantage for d in data], dtype=torch.float32)
        sampling = _aligned([d.sampling_logprobs for d in data], lp.values) \
            if any(d.sampling_logprobs is not None for d in data) else None
        ref = _aligned([d.ref_logprobs for d in data], lp.values) \
            if all(d.ref_logprobs is not None for d in data) else None
        value, kl = policy_loss(lp.values, lp.mask, advantages, sampling, ref, loss.kl_beta, loss.clip_epsilon)
        return value, {"kl": float(kl)}

    return fn


def _aligned(rows: Sequence[Sequence[float] | None], like: torch.Tensor) -> torch.Tensor:
    from personalign.engines.local import _right_aligned

    return _right_aligned(rows, like)


def _ce_output(out: Any, data: Sequence[Datum], weights: Sequence[Sequence[float]]) -> ForwardBackwardOutput:
    """The weighted mean NLL from the returned per-token log-probs (the weights already sum to 1)."""
    rows = _logprob_tensors(out, data)
    loss = -sum(float((r * torch.tensor(w)).sum()) for r, w in zip(rows, weights, strict=True))
    return ForwardBackwardOutput(loss, [float(r.sum()) for r in rows])


def _policy_output(out: Any, data: Sequence[Datum], loss: PolicyLoss) -> ForwardBackwardOutput:
    """The policy loss's value recomputed from the returned log-probs (the service reports only sums)."""
    rows = _logprob_tensors(out, data)
    lp = right_aligned(rows)
    value, kl = _policy_as_custom(loss)(data, lp)
    return ForwardBackwardOutput(float(value), [float(r.sum()) for r in rows], kl)


# ---- run records --------------------------------------------------------------------------------
def resolve_state(init_adapter: str) -> str:
    """A training checkpoint's tinker:// path from `init_adapter`: the path itself, or a Tinker run's dir."""
    if init_adapter.startswith(SCHEME):
        return init_adapter
    manifest = Path(init_adapter) / "method.json"
    if not manifest.is_file():
        manifest = Path(init_adapter).parent / "method.json"
    state = json.loads(manifest.read_text(encoding="utf-8")).get("tinker_state") if manifest.is_file() else None
    if not state:
        raise PersonalignError(f"init_adapter {init_adapter}: with the tinker engine, pass a tinker:// training "
                               "checkpoint or the run dir of a tinker-engine run")
    return str(state)


def download_adapter(service: Any, sampler_path: str, target: Path) -> Path:
    """The PEFT adapter of a sampler checkpoint, fetched through the service's archive URL into `target`."""
    rest = service.create_rest_client()
    parts = sampler_path.removeprefix(SCHEME).split("/")
    try:
        if len(parts) == 3:
            url = rest.get_checkpoint_archive_url_from_tinker_path(sampler_path).result().url
        else:
            # skyrl-tx 0.3.0 names sampler weights tinker://RUN/NAME, which the SDK's path parser rejects; the
            # archive endpoint is the same, so ask it through the same client call the parser leads to.
            url = rest._get_checkpoint_archive_url_submit(parts[0], "/".join(parts[1:])).result().url
        with urllib.request.urlopen(url, timeout=600) as response:
            payload = response.read()
    except Exception as exc:  # the SDK raises its own error kinds; any failure means "no local copy"
        raise PersonalignError(f"could not download {sampler_path} from the service: {exc}") from None
    with atomic_dir(target) as tmp, tarfile.open(fileobj=io.BytesIO(payload), mode="r:gz") as archive:
        archive.extractall(tmp, filter="data")
    if not (target / "adapter_config.json").is_file():
        raise PersonalignError(f"{sampler_path}: the downloaded archive holds no adapter_config.json")
    return target
