"""The transformers backend: batched chat sampling, completion log-probs, LoRA adapters; CPU or GPU."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from personalign.backends.base import Conversation, TrainableBackend
from personalign.config import ModelConfig, SamplingConfig
from personalign.errors import PersonalignError


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 matmuls (avx512_bf16 or AMX); bf16 then ~doubles generation speed."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PersonalignError(f"device {device!r} requested but no CUDA GPU is visible; use --device cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype not in ("auto", "fp32", "bf16"):
        raise PersonalignError(f"dtype {dtype!r}: use auto, fp32 or bf16")
    if dtype == "fp32":
        return torch.float32
    if dtype == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if cpu_supports_bf16() else torch.float32


def default_batch_size(device: torch.device) -> int:
    """Generation batch when the config leaves it open. On a GPU a small model costs about the same time per
    decoding step whatever the batch (launch-bound), so batches are large there. On CPU, sampling at batch 32
    gave 1.8-2.1x the tokens/s of batch 8 and batch 64 little more (BENCHMARKS.md, sampling: batch sweep),
    while its padding and memory grow with the batch; DITTO, synthetic data and RL sampling all use it."""
    return 64 if device.type == "cuda" else 32


class GeneratedTokensRepetitionPenalty:
    """The CTRL repetition penalty (divide a positive logit by `penalty`, multiply a negative one) applied to the
    tokens generated so far only, i.e. to the columns of `input_ids` after `prompt_length`.

    Written by hand because transformers' `repetition_penalty` also penalizes every prompt token, and a
    personalization prompt is full of what the output should repeat: the profile's sign-off, names, phrasing
    of the demonstrations. With the built-in penalty at 1.15 the demo never produced the sign-off it asks for.
    """

    def __init__(self, penalty: float, prompt_length: int):
        self.penalty = penalty
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        generated = input_ids[:, self.prompt_length :]
        if generated.shape[1] == 0:
            return scores
        seen = torch.gather(scores, 1, generated)
        seen = torch.where(seen < 0, seen * self.penalty, seen / self.penalty)
        return scores.scatter(1, generated, seen)


class NucleusSampler:
    """Draws the next token from the temperature-scaled nucleus (the distribution of transformers'
    `TemperatureLogitsWarper` + `TopPLogitsWarper` + multinomial sampling) and returns scores in which only the
    drawn token is finite, so `generate` runs in greedy mode and its argmax takes the draw.

    Written by hand because both halves of transformers' sampling scale with the whole vocabulary at every step:
    `TopPLogitsWarper` sorts it (77 ms for a [32, 49152] score matrix on 2 CPU cores, as long as the forward pass)
    and `torch.multinomial` draws one exponential variate per vocabulary entry (31 ms). Here the nucleus is
    searched among the `candidates` most likely tokens (`topk`) and the draw is made among them. Only a row whose
    top candidates hold less than `top_p` of the mass (a flat distribution) is sorted and drawn over the full
    vocabulary, so the distribution is exact either way (tests/backends/test_hf.py checks it against
    transformers'). Used with greedy decoding, it leaves the other steps of `generate` as they are.
    """

    def __init__(self, temperature: float, top_p: float, candidates: int = 256):
        if temperature <= 0.0:
            raise ValueError("NucleusSampler samples; temperature 0 is greedy decoding")
        self.temperature = temperature
        self.top_p = top_p
        self.candidates = candidates

    def draw(self, scores: torch.Tensor) -> torch.Tensor:
        """One token id per row of raw (untempered) scores [batch, vocab]: shape [batch].

        The draw is an exponential race (argmax of p / E, E ~ Exp(1), which picks token j with probability
        p_j / sum p) whose variates are keyed by token id, as `torch.multinomial`'s are: so it depends only on
        the nucleus' probabilities, never on the order of the candidates, which near-tied logits swap under tiny
        numeric differences (a merged vs an unmerged LoRA, another batch's padding). Uniforms over the whole
        vocabulary cost 4 ms at batch 32; only the candidates' are turned into exponentials.
        """
        scores = scores.float() / self.temperature
        uniforms = torch.rand_like(scores)
        if self.top_p >= 1.0:
            return (scores.softmax(dim=-1) / -uniforms.log()).argmax(dim=-1)
        values, indices = scores.topk(min(self.candidates, scores.shape[-1]), dim=-1)
        probs = (values - scores.logsumexp(dim=-1, keepdim=True)).exp()
        race = probs * self._keep(probs) / -uniforms.gather(1, indices).log()
        tokens = indices.gather(1, race.argmax(dim=-1, keepdim=True)).squeeze(1)
        uncovered = (probs.sum(dim=-1) < self.top_p).nonzero().flatten()
        if uncovered.numel():
            rows = scores[uncovered]
            sorted_rows, order = rows.sort(dim=-1, descending=True)
            sorted_probs = sorted_rows.softmax(dim=-1)
            nucleus = torch.zeros_like(rows).scatter_(1, order, sorted_probs * self._keep(sorted_probs))
            tokens[uncovered] = (nucleus / -uniforms[uncovered].log()).argmax(dim=-1)
        return tokens

    def _keep(self, sorted_probs: torch.Tensor) -> torch.Tensor:
        """TopPLogitsWarper's rule on probabilities sorted most likely first: keep a token while the mass before
        it is below top_p (the first token always)."""
        keep = (sorted_probs.cumsum(dim=-1) - sorted_probs) < self.top_p
        keep[:, 0] = True
        return keep

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        tokens = self.draw(scores)
        return torch.full_like(scores, float("-inf")).scatter_(1, tokens.unsqueeze(1), 0.0)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers; checked up front so offline machines fail fast, not after retries."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    from personalign.settings import hub_offline

    if hub_offline():
        return False
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def resolve_model_path(model: str) -> str:
    """'default' → the converted embedded model; a folder stays; anything else is a hub id."""
    if model == "default":
        from personalign.backends.default_model import ensure_default_model

        return str(ensure_default_model())
    return model


class HFBackend(TrainableBackend):
    """A causal LM from transformers (any model with a chat template), optionally with a LoRA adapter."""

    name = "hf"

    def __init__(self, config: ModelConfig | None = None, model: Any = None, tokenizer: Any = None):
        """Load from `config`, or wrap an already-built `model` + `tokenizer` (tests, training loops)."""
        self.config = config or ModelConfig()
        self._device = resolve_device(self.config.device)
        self.batch_size = self.config.batch_size or default_batch_size(self._device)
        if model is None:
            model, tokenizer = self._load(self.config)
        self.model = model
        self.tokenizer = tokenizer
        self._prepare_tokenizer()
        self.model.eval()

    # ---- loading -------------------------------------------------------------------------------
    def _load(self, config: ModelConfig) -> tuple[Any, Any]:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from personalign.settings import quiet_third_party

        quiet_third_party()
        path = resolve_model_path(config.model)
        dtype = resolve_dtype(config.dtype, self._device)
        start = time.perf_counter()
        local_only = Path(path).exists() or not hub_reachable()
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local_only)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=local_only)
        except OSError as exc:
            if Path(path).exists():
                reason = f"the folder is not a complete model ({str(exc).splitlines()[0][:120]})"
            elif local_only:
                reason = "it is not a local folder nor in the Hugging Face cache, and the hub is unreachable"
            else:
                reason = f"the hub refused it ({str(exc).splitlines()[0][:120]})"
            raise PersonalignError(
                f"cannot load model {config.model!r}: {reason}; use 'default', a local model folder, "
                "or a hub id on a machine that reaches the hub"
            ) from None
        model.to(self._device)
        if config.adapter:
            model = self._attach_adapter(model, config.adapter)
        self.load_seconds = time.perf_counter() - start
        return model, tokenizer

    @staticmethod
    def _attach_adapter(model: Any, adapter: str) -> Any:
        from peft import PeftModel

        if not (Path(adapter) / "adapter_config.json").is_file():
            raise PersonalignError(f"{adapter}: no adapter_config.json; pass the folder a LoRA run saved")
        return PeftModel.from_pretrained(model, adapter)

    def _prepare_tokenizer(self) -> None:
        tok = self.tokenizer
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        if not getattr(tok, "chat_template", None):
            raise PersonalignError(
                "the model's tokenizer has no chat template; personalign needs a chat/instruct model"
            )

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name, "model": self.config.model, "adapter": self.config.adapter,
            "device": str(self.device), "dtype": str(self.dtype).replace("torch.", ""),
        }

    # ---- chat rendering: through the one client-side renderer (engines.render) ---------------------
    @property
    def renderer(self) -> Any:
        from personalign.engines.render import ChatRenderer

        return ChatRenderer(self.tokenizer)

    def prompt_ids(self, conversation: Conversation) -> list[int]:
        return self.renderer.prompt_ids(conversation)

    def prompt_completion_ids(self, conversation: Conversation, completion: str) -> tuple[list[int], list[int]]:
        return self.renderer.prompt_completion_ids(conversation, completion)

    # ---- sampling ----------------------------------------------------------------------------------
    def generate(
        self, conversations: Sequence[Conversation], sampling: SamplingConfig, progress: bool = False,
        adapter_names: Sequence[str] | None = None,
    ) -> list[list[str]]:
        """Left-padded batches sorted by prompt length (less padding), `n` samples per prompt, seeded.

        `adapter_names` (one per conversation, "__base__" for none) mixes PEFT LoRA adapters in one batch (the
        server).
        """
        renderer = self.renderer
        samples = self.sample_ids([renderer.prompt_ids(c) for c in conversations], sampling, progress, adapter_names)
        # Per sample: (tokens generated incl. the end-of-turn token, whether it ended by itself rather than at
        # max_new_tokens); the server's usage and finish_reason read it after the call.
        self.last_token_counts: list[list[tuple[int, bool]]] = [
            [(len(s.tokens) + (s.stop_reason == "stop"), s.stop_reason == "stop") for s in per_prompt]
            for per_prompt in samples]
        return [[renderer.decode(s, sampling.stop)[0] for s in per_prompt] for per_prompt in samples]

    @torch.no_grad()
    def sample_ids(self, encoded: Sequence[list[int]], sampling: SamplingConfig, progress: bool = False,
                   adapter_names: Sequence[str] | None = None) -> list[list[Any]]:
        """`sampling.n` `SampledSequence`s (tokens before the end-of-turn, stop reason) per prompt's token ids."""
        from personalign.engines.base import SampledSequence

        stop_ids = self.end_token_ids()
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        results: list[list[Any]] = [[] for _ in encoded]
        batch_size = max(1, self.batch_size // sampling.n)
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        pad_id = self.tokenizer.pad_token_id
        iterator: Any = batches
        if progress:
            from personalign.progress import track

            iterator = track(batches, description="generating", transient=True)
        for batch_index, batch in enumerate(iterator):
            torch.manual_seed(sampling.seed + batch_index)
            width = max(len(encoded[i]) for i in batch)
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            for row, index in enumerate(batch):
                ids = encoded[index]
                input_ids[row, width - len(ids) :] = torch.tensor(ids)
                attention[row, width - len(ids) :] = 1
            # Rows are expanded n-fold here (as `num_return_sequences` would, repeat_interleave) because generate
            # runs in greedy mode (NucleusSampler draws) and because PEFT matches adapter names to rows first.
            input_ids = input_ids.repeat_interleave(sampling.n, dim=0)
            attention = attention.repeat_interleave(sampling.n, dim=0)
            extra: dict[str, Any] = {}
            if adapter_names is not None:
                extra["adapter_names"] = [adapter_names[i] for i in batch for _ in range(sampling.n)]
            out = self.model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=attention.to(self.device),
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                max_new_tokens=sampling.max_new_tokens,
                logits_processor=self.logits_processors(sampling, width),
                pad_token_id=pad_id,
                **extra,
            )
            for row, index in enumerate(batch):
                for tokens in out[row * sampling.n : (row + 1) * sampling.n, width:].tolist():
                    end = next((i for i, t in enumerate(tokens) if t in stop_ids), None)
                    results[index].append(SampledSequence(tokens[:end], "length" if end is None else "stop"))
        return results

    @staticmethod
    def logits_processors(sampling: SamplingConfig, prompt_width: int) -> Any:
        """What generate (in greedy mode) applies at each step: the generated-tokens repetition penalty, then,
        when sampling, the draw from the temperature-scaled nucleus, whose one finite score the argmax takes."""
        from transformers import LogitsProcessorList

        processors: list[Any] = []
        if sampling.repetition_penalty != 1.0:
            processors.append(GeneratedTokensRepetitionPenalty(sampling.repetition_penalty, prompt_width))
        if sampling.temperature != 0.0:
            processors.append(NucleusSampler(sampling.temperature, sampling.top_p))
        return LogitsProcessorList(processors)

    def end_token_ids(self) -> set[int]:
        """Token ids that end generation: the generation config's eos id(s) and the tokenizer's."""
        eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        return ids | ({self.tokenizer.eos_token_id} if self.tokenizer.eos_token_id is not None else set())

    # ---- scoring -----------------------------------------------------------------------------------
    @torch.no_grad()
    def logprobs(
        self, conversations: Sequence[Conversation], completions: Sequence[str], batch_size: int = 8
    ) -> list[float]:
        if len(conversations) != len(completions):
            raise ValueError("conversations and completions must have the same length")
        pairs = [self.prompt_completion_ids(c, y) for c, y in zip(conversations, completions, strict=True)]
        scores: list[float] = []
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            scores.extend(sequence_logprobs(self.model, chunk, self.tokenizer.pad_token_id, self.device).tolist())
        return scores


def sequence_logprobs(
    model: Any, pairs: Sequence[tuple[list[int], list[int]]], pad_id: int, device: torch.device
) -> torch.Tensor:
    """Sum log p(completion | prompt) per (prompt_ids, completion_ids) pair; differentiable.

    Right-padded batch; only completion positions count. Shared by scoring, DPO and DITTO.
    """
    width = max(len(p) + len(c) for p, c in pairs)
    input_ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(pairs), width), dtype=torch.long)
    labels_mask = torch.zeros((len(pairs), width), dtype=torch.bool)
    for row, (prompt, completion) in enumerate(pairs):
        ids = prompt + completion
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention[row, : len(ids)] = 1
        labels_mask[row, len(prompt) : len(ids)] = True
    input_ids, attention, labels_mask = input_ids.to(device), attention.to(device), labels_mask.to(device)
    logits = model(input_ids=input_ids, attention_mask=attention).logits[:, :-1].float()
    targets = input_ids[:, 1:]
    token_logp = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (token_logp * labels_mask[:, 1:]).sum(dim=-1)
