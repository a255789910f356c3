"""The `accelerate` engine: the local engine data-parallel over processes (`accelerate launch`, DDP; gloo on CPU).

Every process holds the whole batch (the client sends it to all) and trains on its contiguous shard; the
losses are scaled so that DDP's gradient average equals the one-process gradient of the whole batch:
- `CrossEntropy`: each shard's Σ w·nll over the whole batch's Σ w, times the number of processes;
- `PolicyLoss`: each shard's sum of per-sequence losses over the batch size, times the number of processes;
- `CustomLoss`: the shards' per-token log-probs are all-gathered with autograd, every process evaluates the
  loss on the whole batch, and the gather's backward (a sum over processes) with DDP's average gives exactly
  the whole-batch gradient, so any function of the batch's log-probs (DPO's pairs span shards) stays exact.
Sampling and `compute_logprobs` are data-parallel too: each process runs its contiguous shard of the prompts
(or sequences) and the results are all-gathered, so every process holds the same whole result (sampled text
then agrees across processes even though their RNG streams differ). Only the main process (rank 0) writes
state and weights; each process's RNG state (it drives dropout on its own shard) is gathered into the
checkpoint, so a resumed run continues every process's stream exactly.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import torch

from personalign.config import SamplingConfig
from personalign.engines.base import (
    CrossEntropy,
    CustomLoss,
    Datum,
    ForwardBackwardOutput,
    LoraSettings,
    Loss,
    PolicyLoss,
    SampledSequence,
    TokenLogprobs,
    policy_loss,
    resolved,
)
from personalign.engines.local import LocalEngine, _right_aligned, _weights_tensor, sft_batch, token_logprobs
from personalign.errors import PersonalignError

RNG_FILE = "rng_per_process.pt"
T = TypeVar("T")


class AccelerateEngine(LocalEngine):
    """`LocalEngine` with the forward/backward split across the processes `accelerate launch` started."""

    name = "accelerate"

    def __init__(self, backend: Any, lora: LoraSettings, init_adapter: str | None = None,
                 logprob_batch_size: int = 8):
        from accelerate import Accelerator

        super().__init__(backend, lora, init_adapter, logprob_batch_size)
        from personalign.engines.launch import check_distributed_type

        self.accelerator = Accelerator(cpu=backend.device.type == "cpu")
        check_distributed_type(self.accelerator.distributed_type, "engine accelerate")
        self.world = self.accelerator.num_processes
        self.rank = self.accelerator.process_index
        self.ddp = self.accelerator.prepare_model(self.model)  # DDP-wrapped when world > 1

    @property
    def is_main(self) -> bool:  # type: ignore[override]
        return self.accelerator.is_main_process

    def sync(self) -> None:
        self.accelerator.wait_for_everyone()

    def broadcast(self, value: T) -> T:
        if self.world == 1:
            return value
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([value], from_process=0)[0]

    def _gather_objects(self, rows: list[Any]) -> list[Any]:
        """Every process's `rows`, concatenated in process order, on every process."""
        from accelerate.utils import gather_object

        return list(gather_object(rows))

    def _shard(self, n: int) -> tuple[int, int, int]:
        """(start, stop, block): this process's contiguous slice of a batch of n."""
        block = math.ceil(n / self.world)
        if (self.world - 1) * block >= n:
            raise PersonalignError(f"a batch of {n} cannot be split over {self.world} processes; use a batch of at "
                                   f"least {self.world} (or fewer processes)")
        return self.rank * block, min(n, (self.rank + 1) * block), block

    def _sum_all(self, value: torch.Tensor) -> float:
        return float(self.accelerator.reduce(value.detach().reshape(1).clone(), reduction="sum"))

    def forward_backward(self, data: Sequence[Datum], loss: Loss) -> Future[ForwardBackwardOutput]:
        if self.world == 1:
            return super().forward_backward(data, loss)
        start, stop, block = self._shard(len(data))
        shard = list(data[start:stop])
        pairs = [(d.prompt, d.completion) for d in shard]
        device = self.backend.device
        self.ddp.train(isinstance(loss, CrossEntropy))
        if isinstance(loss, CrossEntropy):
            batch = sft_batch(pairs, self.pad_id)
            input_ids = batch["input_ids"].to(device)
            logits = self.ddp(input_ids=input_ids, attention_mask=batch["attention_mask"].to(device)).logits
            logits = logits[:, :-1].float()
            labels = batch["labels"][:, 1:].to(device)
            nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1),
                                                    ignore_index=-100, reduction="none")
            weights = _weights_tensor(shard, batch["input_ids"].shape[1])
            w = (weights[:, 1:].reshape(-1).to(nll) if weights is not None else (labels.reshape(-1) != -100).to(nll))
            total = sum(sum(d.weights) if d.weights is not None else len(d.completion) for d in data)
            part = (nll * w).sum() / total
            (part * self.world).backward()
            out = ForwardBackwardOutput(self._sum_all(part))
        else:
            logp, mask = token_logprobs(self.ddp, pairs, self.pad_id, device)
            if isinstance(loss, PolicyLoss):
                advantages = torch.tensor([d.advantage for d in shard], dtype=torch.float32, device=logp.device)
                sampling = None
                if any(d.sampling_logprobs is not None for d in shard):
                    sampling = _right_aligned([d.sampling_logprobs for d in shard], logp)
                has_ref = all(d.ref_logprobs is not None for d in shard)
                if loss.kl_beta > 0 and not has_ref:
                    raise PersonalignError("PolicyLoss with kl_beta > 0 needs every datum's ref_logprobs")
                ref = _right_aligned([d.ref_logprobs for d in shard], logp) if has_ref else None
                per_seq, kl = policy_loss(logp, mask, advantages, sampling, ref, loss.kl_beta, loss.clip_epsilon,
                                          reduce=False)
                part = per_seq.sum() / len(data)
                (part * self.world).backward()
                out = ForwardBackwardOutput(self._sum_all(part), metrics={"kl": self._sum_all(kl.sum()) / len(data)})
            elif isinstance(loss, CustomLoss):
                tl = self._gather(logp, mask, data, block)
                value, metrics = loss.fn(data, tl)
                value.backward()
                out = ForwardBackwardOutput(float(value.detach()), tl.sums().detach().tolist(), dict(metrics))
            else:
                raise PersonalignError(f"unknown loss {loss!r}; use CrossEntropy, PolicyLoss or CustomLoss")
        self.model.eval()
        return resolved(out)

    # ---- data-parallel sampling and scoring: shard, run, all-gather ---------------------------------
    def _slice(self, n: int) -> slice:
        block = math.ceil(n / self.world) if n else 0
        return slice(min(n, self.rank * block), min(n, (self.rank + 1) * block))

    def sample(self, prompts: Sequence[list[int]], sampling: SamplingConfig,
               progress: bool = False) -> Future[list[list[SampledSequence]]]:
        if self.world == 1:
            return super().sample(prompts, sampling, progress)
        shard = list(prompts[self._slice(len(prompts))])
        mine = super().sample(shard, sampling, progress).result() if shard else []
        return resolved(self._gather_objects(mine))

    def compute_logprobs(self, data: Sequence[Datum]) -> Future[TokenLogprobs]:
        if self.world == 1:
            return super().compute_logprobs(data)
        shard = list(data[self._slice(len(data))])
        mine = super().compute_logprobs(shard).result().per_datum() if shard else []
        rows = self._gather_objects(mine)
        keep = max((len(d.completion) for d in data), default=0)
        values = torch.zeros((len(data), keep))
        mask = torch.zeros((len(data), keep), dtype=torch.bool)
        for i, row in enumerate(rows):
            if row:
                values[i, keep - len(row):] = torch.tensor(row)
                mask[i, keep - len(row):] = True
        return resolved(TokenLogprobs(values, mask))

    def _gather(self, logp: torch.Tensor, mask: torch.Tensor, data: Sequence[Datum], block: int) -> TokenLogprobs:
        """The whole batch's per-token log-probs, this shard's rows differentiable (autograd all_gather)."""
        from torch.distributed.nn.functional import all_gather

        keep = max(len(d.completion) for d in data)
        rows = logp.shape[0]
        values = torch.nn.functional.pad(logp, (keep - logp.shape[1], 0, 0, block - rows))
        full_mask = torch.nn.functional.pad(mask, (keep - mask.shape[1], 0, 0, block - rows))
        # Blocks are contiguous and only the last is short, so rows 0..n-1 of the gather are the batch in order.
        with warnings.catch_warnings():  # deprecated in favour of a private module: still torch's public autograd
            warnings.simplefilter("ignore", FutureWarning)  # all_gather, so its warning is noise for our users
            gathered = torch.cat(all_gather(values), dim=0)[: len(data)]
            masks = torch.cat(all_gather(full_mask.float()), dim=0)[: len(data)] > 0.5
        return TokenLogprobs(gathered, masks)

    def save_state(self, folder: Path, optimizer: bool = True) -> Path:
        """Called by every process (it gathers each one's RNG state); only the main process writes `folder`."""
        rng = self._gather_objects([torch.get_rng_state()]) if optimizer and self.world > 1 else None
        if self.is_main:
            super().save_state(folder, optimizer)
            if rng is not None:
                torch.save(rng, Path(folder) / RNG_FILE)
        return Path(folder)

    def load_state(self, folder: Path, optimizer: bool = True) -> None:
        super().load_state(folder, optimizer)
        per_process = Path(folder) / RNG_FILE
        if optimizer and per_process.is_file():
            states = torch.load(per_process, map_location="cpu")
            if len(states) == self.world:  # resumed on as many processes: each continues its own stream
                torch.set_rng_state(states[self.rank])

    def save_weights(self, folder: Path) -> dict[str, Any]:
        if self.is_main:
            saved = super().save_weights(folder)
        else:
            saved = {"adapter": "adapter"} if hasattr(self.model, "peft_config") else \
                {"model": str((Path(folder) / "model").resolve())}
        self.sync()
        return saved
