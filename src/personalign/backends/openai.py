"""The `openai` backend: any OpenAI-compatible server (OpenAI, vLLM, `personalign serve`) as a generator or judge.

`generate` sends one chat request per conversation, `concurrency` at a time (a batch becomes concurrent
requests; the server batches them). Retries with exponential backoff on 429 / 5xx / connection errors are the
`openai` client's own (`max_retries`; it honours Retry-After). `logprobs` of given completions uses vLLM's
protocol, which `personalign serve` implements too: `/tokenize` gives the length of the prompt, and a chat
request with the completion as the final assistant message, `add_generation_prompt: false` and
`prompt_logprobs: 0` returns each token's log-probability; the completion's are summed. Servers without it
(OpenAI's own API) get a one-line error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from personalign.backends.base import Conversation, GenerationBackend, truncate_at_stop
from personalign.config import ModelConfig, SamplingConfig
from personalign.errors import PersonalignError

T = TypeVar("T")


class OpenAIBackend(GenerationBackend):
    name = "openai"

    def __init__(self, config: ModelConfig):
        import httpx
        import openai

        from personalign.settings import env_secret

        self.config = config
        self.settings = config.openai
        key = env_secret(self.settings.api_key_env)
        # Local servers usually need no key; the client insists on a non-empty one.
        self.client = openai.OpenAI(base_url=self.settings.base_url, api_key=key or "none",
                                    timeout=self.settings.timeout_s, max_retries=self.settings.max_retries)
        self._http = httpx.Client(timeout=self.settings.timeout_s,
                                  headers={"Authorization": f"Bearer {key}"} if key else {})

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.config.model, "base_url": self.settings.base_url}

    # ---- plumbing ------------------------------------------------------------------------------------
    def _map(self, fn: Callable[[int], T], count: int, progress: bool = False) -> list[T]:
        with ThreadPoolExecutor(self.settings.concurrency) as pool:
            futures = [pool.submit(fn, i) for i in range(count)]
            if progress:
                from personalign.progress import track

                for _ in track(futures, description=f"{self.config.model} via {self.settings.base_url}",
                               transient=True):
                    _.result()
            return [f.result() for f in futures]

    def _call(self, fn: Callable[[], T]) -> T:
        import openai

        where = f"{self.settings.base_url} (model {self.config.model!r})"
        try:
            return fn()
        except openai.APIStatusError as exc:
            message = exc.body.get("message") if isinstance(exc.body, dict) else None
            raise PersonalignError(f"{where}: HTTP {exc.status_code}: {message or exc.message}") from None
        except openai.APIConnectionError as exc:
            raise PersonalignError(f"{where}: cannot reach the server ({exc}); check model.openai.base_url") from None

    # ---- sampling --------------------------------------------------------------------------------------
    def generate(
        self, conversations: Sequence[Conversation], sampling: SamplingConfig, progress: bool = False
    ) -> list[list[str]]:
        if len(sampling.stop) > 4:
            raise PersonalignError("sampling.stop: the OpenAI API takes at most 4 stop strings")
        extra = {"repetition_penalty": sampling.repetition_penalty} if sampling.repetition_penalty != 1.0 else None

        def one(i: int) -> list[str]:
            reply = self._call(lambda: self.client.chat.completions.create(
                model=self.config.model, messages=list(conversations[i]), n=sampling.n,  # type: ignore[arg-type]
                temperature=sampling.temperature, top_p=sampling.top_p, max_tokens=sampling.max_new_tokens,
                stop=list(sampling.stop) or None, seed=sampling.seed, extra_body=extra,
            ))
            choices = sorted(reply.choices, key=lambda c: c.index)
            return [truncate_at_stop(c.message.content or "", sampling.stop).strip() for c in choices]

        return self._map(one, len(conversations), progress)

    # ---- scoring ---------------------------------------------------------------------------------------
    def logprobs(self, conversations: Sequence[Conversation], completions: Sequence[str]) -> list[float]:
        if len(conversations) != len(completions):
            raise ValueError("conversations and completions must have the same length")
        return self._map(lambda i: self._completion_logprob(conversations[i], completions[i]), len(conversations))

    def _tokenize(self, messages: Conversation, add_generation_prompt: bool) -> list[int]:
        root = self.settings.base_url.rstrip("/").removesuffix("/v1")
        response = self._http.post(f"{root}/tokenize", json={
            "model": self.config.model, "messages": messages, "add_generation_prompt": add_generation_prompt})
        if response.status_code != 200:
            raise PersonalignError(self._no_logprobs(f"/tokenize answered HTTP {response.status_code}"))
        return list(response.json()["tokens"])

    def _completion_logprob(self, conversation: Conversation, completion: str) -> float:
        full_messages = [*conversation, {"role": "assistant", "content": completion}]
        prompt = self._tokenize(conversation, add_generation_prompt=True)
        full = self._tokenize(full_messages, add_generation_prompt=False)
        if full[: len(prompt)] != prompt or len(full) <= len(prompt):
            raise PersonalignError(self._no_logprobs("the chat template renders the prompt differently once a "
                                                     "reply follows, so the completion's tokens cannot be found"))
        reply = self._call(lambda: self.client.chat.completions.create(
            model=self.config.model, messages=full_messages, max_tokens=1, temperature=0.0,  # type: ignore[arg-type]
            extra_body={"prompt_logprobs": 0, "add_generation_prompt": False},
        ))
        scored = (reply.model_extra or {}).get("prompt_logprobs")
        if not isinstance(scored, list) or len(scored) != len(full):
            raise PersonalignError(self._no_logprobs("the reply has no prompt_logprobs for every prompt token"))
        return float(sum(scored[i][str(full[i])]["logprob"] for i in range(len(prompt), len(full))))

    def _no_logprobs(self, why: str) -> str:
        return (f"{self.settings.base_url}: cannot score completions ({why}); log-probabilities need a server "
                "with vLLM's prompt_logprobs and /tokenize (vLLM, personalign serve), or use backend: hf")
