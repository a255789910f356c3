"""The hf engine: many personalizers on shared base models, and a scheduler that batches concurrent requests.

Every trained adapter is loaded once into its base model with PEFT (`load_adapter`) and named; one generate
call may mix adapters through PEFT's mixed-batch inference (`adapter_names`, "__base__" for none), so requests
for different personalizers on the same base share a batch. Requests wait in one bounded queue; a single worker
thread owns the models (no locks around torch), takes the first request, lets others join while they keep arriving
within a short gap of each other (up to `max_batch` sequences or `max_wait`), groups them by base model and
sampling settings, and runs one generate per group.

A request that names a `seed` runs as its own batch seeded exactly as `HFBackend.generate` seeds a one-prompt
call, so it reproduces `personalign generate --seed` token for token; unseeded requests are merged freely.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from personalign.backends.base import Conversation, GenerationBackend
from personalign.backends.hf import HFBackend, resolve_model_path
from personalign.config import ModelConfig, SamplingConfig
from personalign.errors import PersonalignError
from personalign.methods.base import Personalizer

BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in a mixed batch


class Overloaded(Exception):
    """The queue is full; the caller answers 429."""


class BaseSlot:
    """One base model in memory and the LoRA adapters loaded into it by name."""

    def __init__(self, config: ModelConfig):
        self.config = config
        self.backend = HFBackend(config)
        self.adapters: dict[str, str] = {}  # adapter name → folder

    @property
    def has_adapters(self) -> bool:
        return bool(self.adapters)

    def attach(self, folder: str, name: str) -> None:
        from peft import PeftConfig, PeftModel

        if not (Path(folder) / "adapter_config.json").is_file():
            raise PersonalignError(f"{folder}: no adapter_config.json; pass the folder a LoRA run saved")
        if PeftConfig.from_pretrained(folder).peft_type != "LORA":
            raise PersonalignError(f"{folder}: only LoRA adapters can share a batch; this one is not LoRA")
        model = self.backend.model
        if isinstance(model, PeftModel):
            model.load_adapter(folder, adapter_name=name)
        else:
            self.backend.model = PeftModel.from_pretrained(model, folder, adapter_name=name)
        self.backend.model.eval()
        self.adapters[name] = folder

    def detach(self, name: str) -> None:
        self.adapters.pop(name, None)
        model = self.backend.model
        # PEFT cannot delete the last adapter of a PeftModel; that one stays in memory, unreachable by name.
        if len(getattr(model, "peft_config", {})) > 1:
            model.delete_adapter(name)

    def names_for(self, adapter: str, count: int) -> list[str] | None:
        return [adapter] * count if self.has_adapters else None


class SharedBackend(GenerationBackend):
    """What a served personalizer holds: its slot's base model with its adapter (or none) selected per call."""

    name = "hf-shared"

    def __init__(self, slot: BaseSlot, adapter: str = BASE_ADAPTER):
        self.slot = slot
        self.adapter = adapter

    def generate(
        self, conversations: Sequence[Conversation], sampling: SamplingConfig, progress: bool = False
    ) -> list[list[str]]:
        return self.slot.backend.generate(conversations, sampling, progress=progress,
                                          adapter_names=self.slot.names_for(self.adapter, len(conversations)))

    def logprobs(self, conversations: Sequence[Conversation], completions: Sequence[str]) -> list[float]:
        backend = self.slot.backend
        pairs = [backend.prompt_completion_ids(c, y) for c, y in zip(conversations, completions, strict=True)]
        # token_logprobs starts at the second token, so the completion's scores start at index len(prompt) - 1.
        return [float(sum(lp for lp, _ in token_logprobs(self.slot, self.adapter, p + c)[len(p) - 1 :]))
                for p, c in pairs]


class BackendPool:
    """Builds backends for personalizers so that all those on one base model share it (`backend_factory`)."""

    def __init__(self, batch_size: int):
        self.batch_size = batch_size
        self.slots: dict[tuple[str, str, str], BaseSlot] = {}
        self._names = itertools.count()

    def slot_for(self, config: ModelConfig) -> BaseSlot:
        base = config.model_copy(update={"adapter": None, "batch_size": self.batch_size})
        model = str(Path(base.model).resolve()) if Path(base.model).exists() else base.model
        key = (model, base.device, base.dtype)
        if key not in self.slots:
            self.slots[key] = BaseSlot(base.model_copy(update={"model": resolve_model_path(base.model)}))
        return self.slots[key]

    def __call__(self, config: ModelConfig) -> SharedBackend:
        if config.backend != "hf":
            raise PersonalignError(f"model backend {config.backend!r}: the hf engine serves local models only")
        slot = self.slot_for(config)
        if config.adapter is None:
            return SharedBackend(slot)
        name = f"adapter-{next(self._names)}"
        slot.attach(config.adapter, name)
        return SharedBackend(slot, name)


@torch.no_grad()
def token_logprobs(slot: BaseSlot, adapter: str, ids: list[int]) -> list[tuple[float, int]]:
    """(log p(token | earlier tokens), rank) for every token after the first, under `adapter`."""
    backend = slot.backend
    input_ids = torch.tensor([ids], device=backend.device)
    kwargs: dict[str, Any] = {"adapter_names": [adapter]} if slot.has_adapters else {}
    logits = backend.model(input_ids=input_ids, **kwargs).logits[0, :-1].float()
    logp = torch.log_softmax(logits, dim=-1)
    targets = input_ids[0, 1:]
    chosen = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    ranks = (logp > chosen.unsqueeze(-1)).sum(-1) + 1
    return list(zip(chosen.tolist(), ranks.tolist(), strict=True))


@dataclass
class Served:
    """One model id of the API: a personalizer on a slot, applied to requests the way `generate` applies it."""

    name: str
    personalizer: Personalizer
    source: str

    @property
    def backend(self) -> SharedBackend:
        backend = self.personalizer.backend
        assert isinstance(backend, SharedBackend)
        return backend

    def conversation(self, messages: Conversation) -> Conversation:
        """The chat sent to the model: the personalizer's chat for the last user message, earlier turns kept.

        A request with one user message gets exactly `personalizer.conversation(text)` (what `generate` sends);
        a method without a system prompt keeps the client's; trailing messages (an assistant reply being scored)
        stay at the end.
        """
        last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
        if last_user is None:
            raise ValueError("messages: needs at least one message with role 'user'")
        built = self.personalizer.conversation(messages[last_user]["content"])
        if built == [messages[last_user]]:
            return list(messages)  # the method adds nothing (base): the request goes through unchanged
        before = messages[:last_user]
        client_system = [m for m in before if m["role"] == "system"]
        history = [m for m in before if m["role"] != "system"]
        system = [m for m in built if m["role"] == "system"] or client_system
        turns = [m for m in built if m["role"] != "system"]
        return [*system, *turns[:-1], *history, turns[-1], *messages[last_user + 1 :]]


@dataclass
class Job:
    served: Served
    conversation: Conversation
    sampling: SamplingConfig
    seeded: bool
    prompt_logprobs: bool = False
    render: dict[str, bool] = field(default_factory=dict)  # chat-template flags for the scored prompt
    future: concurrent.futures.Future[Any] = field(default_factory=concurrent.futures.Future)

    @property
    def rows(self) -> int:
        return self.sampling.n


@dataclass
class Control:
    """A change to the loaded models, run by the worker between batches (so no generate sees half of it)."""

    action: Callable[[], Any]
    future: concurrent.futures.Future[Any] = field(default_factory=concurrent.futures.Future)


@dataclass
class Completion:
    texts: list[str]
    prompt_tokens: int
    completion_tokens: list[int]
    ended: list[bool]  # ended by itself (end-of-turn token), not at max_tokens
    prompt_ids: list[int] | None = None
    prompt_logprobs: list[tuple[float, int]] | None = None


_STOP = object()


class Engine:
    """Served models + the batching worker. `submit` is thread-safe; the worker alone touches the models."""

    def __init__(self, pool: BackendPool, max_batch: int = 32, batch_window_ms: float = 25.0, max_queue: int = 256,
                 max_wait_ms: float = 250.0):
        self.pool = pool
        self.models: dict[str, Served] = {}
        self.max_batch = max_batch
        self.window = batch_window_ms / 1000
        self.max_wait = max_wait_ms / 1000
        self.max_queue = max_queue
        self._queue: queue.Queue[Any] = queue.Queue()
        self._deferred: deque[Any] = deque()
        self._pending = 0
        self._lock = threading.Lock()
        self._seeds = itertools.count(1)
        self._worker: threading.Thread | None = None
        self.batches: list[int] = []  # sequences per generate call (bench and tests read it)
        self.rejected = 0  # requests answered 429

    # ---- models ----------------------------------------------------------------------------------
    def add(self, served: Served) -> None:
        if served.name in self.models:
            raise PersonalignError(f"two served models are named {served.name!r}; rename a run dir or drop one")
        self.models[served.name] = served

    def remove(self, name: str) -> None:
        served = self.models.pop(name)
        backend = served.backend
        if backend.adapter != BASE_ADAPTER and not any(
            s.backend.adapter == backend.adapter for s in self.models.values()
        ):
            backend.slot.detach(backend.adapter)

    def control(self, action: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        """Run `action` on the worker thread between batches (hot-load, unload)."""
        item = Control(action)
        self._queue.put(item)
        return item.future

    # ---- requests --------------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        return self._pending

    def submit(self, job: Job) -> concurrent.futures.Future[Any]:
        with self._lock:
            if self._pending >= self.max_queue:
                self.rejected += 1
                raise Overloaded
            self._pending += 1
        job.future.add_done_callback(self._release)
        self._queue.put(job)
        return job.future

    def _release(self, _future: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._pending -= 1

    # ---- worker ----------------------------------------------------------------------------------
    def start(self) -> None:
        if self._worker is None:
            self._worker = threading.Thread(target=self._run, name="personalign-engine", daemon=True)
            self._worker.start()

    def close(self, timeout: float = 30.0) -> None:
        """Finish what is queued (graceful shutdown), then stop the worker."""
        if self._worker is not None:
            self._queue.put(_STOP)
            self._worker.join(timeout)
            self._worker = None

    def _next(self, timeout: float | None) -> Any:
        if self._deferred:
            return self._deferred.popleft()
        if timeout is not None and timeout <= 0:
            return self._queue.get_nowait()
        return self._queue.get(timeout=timeout)

    def _run(self) -> None:
        while True:
            item = self._next(None)
            if item is _STOP:
                return
            if isinstance(item, Control):
                _settle(item.future, item.action)
                continue
            batch = [item]
            # Keep collecting while requests keep arriving within `window` of each other (clients whose replies
            # came back together return staggered), up to max_batch sequences or `max_wait` in total.
            started = time.monotonic()
            while sum(j.rows for j in batch) < self.max_batch:
                timeout = min(self.window, started + self.max_wait - time.monotonic())
                try:
                    nxt = self._next(timeout)
                except queue.Empty:
                    break
                if not isinstance(nxt, Job):
                    self._deferred.append(nxt)  # a control item or the stop marker: after this batch
                    break
                batch.append(nxt)
            self._execute(batch)

    def _execute(self, jobs: list[Job]) -> None:
        groups: dict[Any, list[Job]] = {}
        for job in jobs:
            s = job.sampling
            key: Any = (id(job.served.backend.slot), s.temperature, s.top_p, s.max_new_tokens,
                        s.repetition_penalty, s.n, tuple(s.stop))
            if job.seeded or job.prompt_logprobs:
                key = (key, id(job))  # alone: seeded exactly like a one-prompt `generate`
            groups.setdefault(key, []).append(job)
        for group in groups.values():
            try:
                results = self._generate(group)
            except Exception as exc:  # answered as a 500 per request; the worker keeps serving
                for job in group:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            for job, result in zip(group, results, strict=True):
                job.future.set_result(result)

    def _generate(self, group: list[Job]) -> list[Completion]:
        slot = group[0].served.backend.slot
        sampling = group[0].sampling
        if not group[0].seeded:
            sampling = sampling.model_copy(update={"seed": next(self._seeds)})
        names = [j.served.backend.adapter for j in group] if slot.has_adapters else None
        self.batches.append(sum(j.rows for j in group))
        texts = slot.backend.generate([j.conversation for j in group], sampling, adapter_names=names)
        out = []
        for job, samples, counts in zip(group, texts, slot.backend.last_token_counts, strict=True):
            prompt = slot.backend.prompt_ids(job.conversation)
            out.append(Completion(samples, len(prompt), [c for c, _ in counts], [done for _, done in counts]))
        for job, completion in zip(group, out, strict=True):
            if job.prompt_logprobs:
                ids = rendered_ids(slot.backend, job.conversation, **job.render)
                completion.prompt_ids = ids
                completion.prompt_logprobs = token_logprobs(slot, job.served.backend.adapter, ids)
        return out


def rendered_ids(backend: HFBackend, messages: Conversation, add_generation_prompt: bool = True,
                 continue_final_message: bool = False) -> list[int]:
    """Token ids of `messages` under the chat template, as vLLM renders a chat request (`/tokenize`)."""
    return list(backend.tokenizer.apply_chat_template(
        messages, add_generation_prompt=add_generation_prompt and not continue_final_message,
        continue_final_message=continue_final_message, tokenize=True, return_dict=True,
    )["input_ids"])


def _settle(future: concurrent.futures.Future[Any], action: Callable[[], Any]) -> None:
    try:
        future.set_result(action())
    except Exception as exc:
        future.set_exception(exc)
