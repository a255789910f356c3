"""`backend: tinker`: chat generation and scoring on a Tinker-API service, from a base model or saved weights.

It is what the `tinker` engine trains through (its tokenizer renders chats on the client; its service client
creates the training client), and what `generate --run DIR` rebuilds for a Tinker run: `model` is the base
model as the service lists it, `adapter` the run's `tinker://` sampler weights. Nothing loads locally except
the tokenizer (fetched the SDK's way: from the model's hub id, or the folder a local server serves).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from personalign.backends.base import Conversation, GenerationBackend
from personalign.config import ModelConfig, SamplingConfig
from personalign.errors import PersonalignError


class TinkerBackend(GenerationBackend):
    name = "tinker"

    def __init__(self, config: ModelConfig):
        from personalign.engines.tinker import connect

        if config.model == "default":
            raise PersonalignError("--model: with the tinker engine or backend, name the base model as the service "
                                   "lists it (e.g. Qwen/Qwen3-8B; a local skyrl-tx server: its --base-model)")
        if config.adapter and not config.adapter.startswith("tinker://"):
            raise PersonalignError(f"model.adapter {config.adapter}: the tinker backend samples saved weights by "
                                   "their tinker:// path")
        self.config = config
        self.base_model = config.model
        self.service = connect(config.tinker.base_url, config.tinker.api_key_env, config.tinker.timeout_s)
        self._sampler: Any = None
        self._tokenizer: Any = None

    @property
    def sampler(self) -> Any:
        """The sampling client (created on first use: training never needs the base model's sampler)."""
        if self._sampler is None:
            from personalign.engines.tinker import TinkerSampler, _Resolver, stop_token_ids

            client = (self.service.create_sampling_client(model_path=self.config.adapter) if self.config.adapter
                      else self.service.create_sampling_client(base_model=self.base_model))
            self._sampler = TinkerSampler(client, stop_token_ids(self.tokenizer), _Resolver())
        return self._sampler

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            # The SDK's own tokenizer lookup (hub id, with its workarounds for gated repos; or a local folder).
            from tinker.lib.public_interfaces.sampling_client import _load_tokenizer_from_model_info

            self._tokenizer = _load_tokenizer_from_model_info(self.base_model)
            if self._tokenizer.pad_token_id is None:
                self._tokenizer.pad_token = self._tokenizer.eos_token
        return self._tokenizer

    def generate(self, conversations: Sequence[Conversation], sampling: SamplingConfig,
                 progress: bool = False) -> list[list[str]]:
        from personalign.engines.render import ChatRenderer

        renderer = ChatRenderer(self.tokenizer)
        prompts = [renderer.prompt_ids(c) for c in conversations]
        samples = self.sampler.sample(prompts, sampling, progress).result()
        return [[renderer.decode(s, sampling.stop)[0] for s in per_prompt] for per_prompt in samples]

    def logprobs(self, conversations: Sequence[Conversation], completions: Sequence[str]) -> list[float]:
        from personalign.engines.base import Datum
        from personalign.engines.render import ChatRenderer

        renderer = ChatRenderer(self.tokenizer)
        data = [Datum(*renderer.prompt_completion_ids(c, text)) for c, text in zip(conversations, completions,
                                                                                   strict=True)]
        return self.sampler.compute_logprobs(data).result().sums().tolist() if data else []

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.base_model, "adapter": self.config.adapter,
                "base_url": self.config.tinker.base_url}
