"""The `accelerate` engine: the local engine data-parallel over processes (`accelerate launch`: DDP, FSDP2, DeepSpeed).

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

FSDP2 (an accelerate config with `distributed_type: FSDP`, `fsdp_version: 2`) follows accelerate's contract, as
TRL's trainers do: model and optimizer go through `accelerator.prepare` together (accelerate shards each decoder
layer with `fully_shard` and re-points the optimizer at the sharded parameters), backward and gradient clipping
through the accelerator. The losses are scaled exactly as under DDP (FSDP's reduce-scatter averages gradients as
DDP's all-reduce does). Checkpoints and adapters are gathered whole (FULL_STATE_DICT, torch's
`get_model_state_dict` with frozen base weights left out), so rank 0 writes the same files as the local engine:
a checkpoint resumes under any engine or process count. Every forward of a sharded model is a collective, so
each process pads its shard of a sampling or scoring call to the same number of rows (the padding is dropped).

DeepSpeed ZeRO stage 1-2 (an accelerate config with `distributed_type: DEEPSPEED`): model and optimizer go
through `accelerator.prepare` (a DeepSpeedEngine with ZeRO's partitioned optimizer around our AdamW), but the
protocol drives the DeepSpeed engine itself: accelerate's `backward` under DeepSpeed also steps the optimizer,
while here `optim_step` comes after the backward(s) with the step's learning rate and clip. DeepSpeed's
`managed_gradient_accumulation: false` makes `backward` only accumulate and `step` the boundary, so several
`forward_backward` calls before one `optim_step` (gradient accumulation) sum as on one process. Weights stay
whole on every process (ZeRO 1-2 partition only gradients and optimizer state), so sampling, scoring and
snapshots run as under DDP; checkpoints hold the whole Adam moments (gathered with DeepSpeed's
`safe_get_full_optimizer_state`) in the local engine's layout, so they resume under any engine.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from concurrent.futures import Future
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
    TokenLogprobs,
    policy_loss,
    resolved,
)
from personalign.engines.launch import deepspeed_wanted, fsdp_wanted
from personalign.engines.local import (
    OPTIMIZER_FILE,
    WEIGHTS_FILE,
    LocalEngine,
    _right_aligned,
    _weights_tensor,
    sft_batch,
    token_logprobs,
)
from personalign.errors import PersonalignError

RNG_FILE = "rng_per_process.pt"
T = TypeVar("T")


class AccelerateEngine(LocalEngine):
    """`LocalEngine` with the forward/backward split across the processes `accelerate launch` started."""

    name = "accelerate"

    def __init__(self, backend: Any, lora: LoraSettings, init_adapter: str | None = None,
                 logprob_batch_size: int = 8):
        from accelerate import Accelerator
        from accelerate.utils import DistributedType

        super().__init__(backend, lora, init_adapter, logprob_batch_size)
        from personalign.engines.launch import check_distributed_type, check_fsdp_version

        if fsdp_wanted() and not hasattr(self.model, "peft_config"):
            # Seen here: rank 0's save_pretrained of a sharded whole model waits forever on the other processes.
            raise PersonalignError("lora.enabled: false (full fine-tuning) is not supported under FSDP yet; train a "
                                   "LoRA adapter (lora.enabled: true), or use configs/accelerate/ddp.yaml")
        self.accelerator = Accelerator(cpu=backend.device.type == "cpu")
        _fsdp_on_cpu(self.accelerator)
        _deepspeed_on_cpu(self.accelerator)
        check_distributed_type(self.accelerator.distributed_type, "engine accelerate")
        if self.accelerator.distributed_type == DistributedType.FSDP:
            check_fsdp_version(self.accelerator.state.fsdp_plugin.fsdp_version, "engine accelerate")
        self.world = self.accelerator.num_processes
        self.rank = self.accelerator.process_index
        self.fsdp = self.accelerator.is_fsdp2
        self.deepspeed = self.accelerator.distributed_type == DistributedType.DEEPSPEED
        if self.deepspeed:
            _deepspeed_settings(self.accelerator.state.deepspeed_plugin)
            self.names = [n for n, p in self.model.named_parameters() if p.requires_grad]
            # self.ddp is the DeepSpeedEngine (forward, backward, step); self.optimizer accelerate's wrapper
            # around ZeRO's optimizer (its param_groups are our AdamW's, so optim_step sets lr there).
            self.ddp, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        elif self.fsdp:
            # The transformers model (LoRA layers inside) becomes the sharded root, in place: peft's forward and
            # its generate both call it, so the root's hooks gather the weights for either (a PeftModel root is
            # bypassed by generate). The optimizer now holds the shards.
            root = self.model.get_base_model()
            _, self.optimizer = self.accelerator.prepare(root, self.optimizer)
            self.ddp = self.model
            self.params = [p for p in self.model.parameters() if p.requires_grad]
            self.names = [n for n, p in self.model.named_parameters() if p.requires_grad]
            # transformers' generate runs every process in lockstep to the longest sequence (synced_gpus) only
            # for models it marks as FSDP-managed; accelerate's fully_shard does not mark them, so mark it, or a
            # process whose samples end early would stop joining the others' all-gathers.
            root._is_fsdp_managed_module = True
        else:
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

    def _backward(self, value: torch.Tensor) -> None:
        if self.deepspeed:  # accumulates only (managed_gradient_accumulation off); optim_step steps
            self.ddp.backward(value)
        else:
            self.accelerator.backward(value)

    def forward_backward(self, data: Sequence[Datum], loss: Loss) -> Future[ForwardBackwardOutput]:
        if self.world == 1 and not self.deepspeed:  # DeepSpeed owns the gradients even on one process
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
            self._backward(part * self.world)
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
                self._backward(part * self.world)
                out = ForwardBackwardOutput(self._sum_all(part), metrics={"kl": self._sum_all(kl.sum()) / len(data)})
            elif isinstance(loss, CustomLoss):
                tl = self._gather(logp, mask, data, block)
                value, metrics = loss.fn(data, tl)
                self._backward(value)
                out = ForwardBackwardOutput(float(value.detach()), tl.sums().detach().tolist(), dict(metrics))
            else:
                raise PersonalignError(f"unknown loss {loss!r}; use CrossEntropy, PolicyLoss or CustomLoss")
        self.model.eval()
        return resolved(out)

    def optim_step(self, params: AdamParams) -> Future[dict[str, float]]:
        if self.deepspeed:
            return resolved(self._deepspeed_step(params))
        if not self.fsdp or params.grad_clip_norm <= 0:
            return super().optim_step(params)
        # Sharded gradients: the accelerator's clip computes the norm over every process's shards.
        metrics = {"grad_norm": float(self.accelerator.clip_grad_norm_(self.params, params.grad_clip_norm))}
        return resolved({**super().optim_step(dataclasses.replace(params, grad_clip_norm=0.0)).result(), **metrics})

    def _deepspeed_step(self, params: AdamParams) -> dict[str, float]:
        """DeepSpeed's step: it reduces what the backward(s) accumulated, clips with ZeRO's own global norm
        (torch's clip_grad_norm_ formula), steps our AdamW on each process's partition and zeroes the gradients."""
        for group in self.optimizer.param_groups:
            group.update(lr=params.learning_rate, betas=(params.beta1, params.beta2), eps=params.eps,
                         weight_decay=params.weight_decay)
        self.ddp.optimizer.clip_grad = max(params.grad_clip_norm, 0.0)  # per step, as the protocol passes it
        with warnings.catch_warnings():  # ZeRO's all_gather_into_tensor, deprecated by torch: noise for our users
            warnings.simplefilter("ignore", FutureWarning)
            self.ddp.step()
        if params.grad_clip_norm <= 0:
            return {}
        return {"grad_norm": float(self.ddp.get_global_grad_norm())}

    # ---- data-parallel sampling and scoring: shard, run, all-gather ---------------------------------
    def _lockstep_shard(self, items: Sequence[T]) -> tuple[list[T], int]:
        """This process's contiguous shard of `items` and how many of its rows are real. Under FSDP every
        forward is a collective, so the shard is padded (repeating the first item) to the same length on
        every process, which then runs the same number of batches; the padding's results are dropped."""
        n = len(items)
        block = math.ceil(n / self.world) if n else 0
        shard = list(items[min(n, self.rank * block): min(n, (self.rank + 1) * block)])
        real = len(shard)
        if self.fsdp and n:
            shard += [items[0]] * (block - real)
        return shard, real

    def sample(self, prompts: Sequence[list[int]], sampling: SamplingConfig,
               progress: bool = False) -> Future[list[list[SampledSequence]]]:
        if self.world == 1:
            return super().sample(prompts, sampling, progress)
        shard, real = self._lockstep_shard(prompts)
        mine = super().sample(shard, sampling, progress).result()[:real] if shard else []
        return resolved(self._gather_objects(mine))

    def compute_logprobs(self, data: Sequence[Datum]) -> Future[TokenLogprobs]:
        if self.world == 1:
            return super().compute_logprobs(data)
        shard, real = self._lockstep_shard(data)
        mine = super().compute_logprobs(shard).result().per_datum()[:real] if shard else []
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
        if self.fsdp:
            self._save_sharded_state(Path(folder), optimizer)
        elif self.deepspeed:
            self._save_deepspeed_state(Path(folder), optimizer)
        elif self.is_main:
            super().save_state(folder, optimizer)
        if rng is not None and self.is_main:
            torch.save(rng, Path(folder) / RNG_FILE)
        return Path(folder)

    def _save_sharded_state(self, folder: Path, optimizer: bool) -> None:
        """The local engine's files from sharded weights: each tensor gathered whole (every process joins),
        the optimizer state keyed by parameter index as `torch.optim` writes it."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

        weights = self._trainable(get_model_state_dict(self.model, options=_full_options()))
        optim = get_optimizer_state_dict(self.model, self._torch_optimizer, options=_full_options()) \
            if optimizer else None
        if not self.is_main:
            return
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(weights, folder / WEIGHTS_FILE)
        if optim is not None:
            torch.save({"optimizer": _by_index(optim, self.names), "rng": torch.get_rng_state()},
                       folder / OPTIMIZER_FILE)

    def _trainable(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`state` without frozen weights: torch keeps a tied output head (frozen) despite ignore_frozen_params."""
        keep = set(self.names)
        return {k: v for k, v in state.items() if k in keep}

    @property
    def _torch_optimizer(self) -> torch.optim.Optimizer:
        return getattr(self.optimizer, "optimizer", self.optimizer)  # accelerate's AcceleratedOptimizer wraps it

    def load_state(self, folder: Path, optimizer: bool = True) -> None:
        if self.fsdp:
            self._load_sharded_state(Path(folder), optimizer)
        elif self.deepspeed:
            self._load_deepspeed_state(Path(folder), optimizer)
        else:
            super().load_state(folder, optimizer)
        per_process = Path(folder) / RNG_FILE
        if optimizer and per_process.is_file():
            states = torch.load(per_process, map_location="cpu")
            if len(states) == self.world:  # resumed on as many processes: each continues its own stream
                torch.set_rng_state(states[self.rank])

    def _load_sharded_state(self, folder: Path, optimizer: bool) -> None:
        """Every process reads the whole files and keeps its shards (torch's `set_*_state_dict`)."""
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

        weights = torch.load(folder / WEIGHTS_FILE, map_location="cpu")
        unknown = [k for k in weights if k not in self.names]
        if unknown:
            raise PersonalignError(f"checkpoint does not match the model (unknown weights {unknown[:3]}); start a "
                                   "new run")
        set_model_state_dict(self.model, weights, options=_full_options(strict=False))
        if optimizer and (folder / OPTIMIZER_FILE).is_file():
            saved = torch.load(folder / OPTIMIZER_FILE, map_location="cpu", weights_only=False)
            set_optimizer_state_dict(self.model, self._torch_optimizer, _by_name(saved["optimizer"], self.names),
                                     options=_full_options())
            torch.set_rng_state(saved["rng"])
        else:  # a fresh optimizer: Adam's moments zeroed, as the local engine's new optimizer starts
            self._torch_optimizer.state.clear()

    # ---- DeepSpeed ZeRO 1-2: whole weights everywhere, Adam moments partitioned over the processes ---
    def _zero_partitions(self) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
        """Each ZeRO parameter group's flat fp32 partition (the tensor our AdamW steps) and its model weights."""
        zero = self.ddp.optimizer
        return list(zip(zero.single_partition_of_fp32_groups, zero.bit16_groups, strict=True))

    def _save_deepspeed_state(self, folder: Path, optimizer: bool) -> None:
        """The local engine's files: the weights (whole on every process) and, per weight, the whole Adam
        moments assembled from every process's partition (every process joins those all-reduces)."""
        from deepspeed.utils import safe_get_full_optimizer_state

        weights = {name: p.detach().clone() for name, p in zip(self.names, self.params, strict=True)}
        optim = None
        if optimizer:
            adam = self._torch_optimizer.optimizer  # ZeRO's optimizer wraps our AdamW
            steps = [adam.state.get(flat, {}).get("step") for flat, _ in self._zero_partitions()]
            state = {}
            if all(step is not None for step in steps):  # Adam has stepped (its state is created lazily)
                for i, p in enumerate(self.params):
                    state[i] = {"step": steps[0].clone(), **{key: safe_get_full_optimizer_state(p, key).cpu()
                                                             for key in ("exp_avg", "exp_avg_sq")}}
            groups = [{k: v for k, v in g.items() if k != "params"} for g in adam.param_groups]
            optim = {"state": state, "param_groups": [{**groups[0], "params": list(range(len(self.params)))}]}
        if not self.is_main:
            return
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(weights, folder / WEIGHTS_FILE)
        if optim is not None:
            torch.save({"optimizer": optim, "rng": torch.get_rng_state()}, folder / OPTIMIZER_FILE)

    def _load_deepspeed_state(self, folder: Path, optimizer: bool) -> None:
        """Every process reads the whole files: the weights into the model and ZeRO's fp32 partition, the Adam
        moments into this process's partition of them."""
        from deepspeed.utils import lazy_init_hp_params_optimizer_state, safe_set_full_optimizer_state

        from personalign.engines.local import load_trainable_state

        load_trainable_state(self.model, torch.load(folder / WEIGHTS_FILE, map_location="cpu"))
        self.ddp.optimizer.refresh_fp32_params()  # ZeRO's fp32 master partition from the weights just loaded
        adam = self._torch_optimizer.optimizer
        saved = torch.load(folder / OPTIMIZER_FILE, map_location="cpu", weights_only=False) \
            if optimizer and (folder / OPTIMIZER_FILE).is_file() else None
        state = saved["optimizer"]["state"] if saved is not None else {}
        step = state[0]["step"] if state else None
        for flat, weights in self._zero_partitions():
            # AdamW's state for the flat partition, as its first step would create it, then linked to the
            # weights' fragments (DeepSpeed links them after its first step otherwise).
            adam.state[flat] = {"step": (step if step is not None else torch.tensor(0.0)).clone(),
                                "exp_avg": torch.zeros_like(flat), "exp_avg_sq": torch.zeros_like(flat)}
            lazy_init_hp_params_optimizer_state(weights, flat, adam.state)
        for i, p in enumerate(self.params):
            for key, value in state.get(i, {}).items():
                if key != "step":
                    safe_set_full_optimizer_state(p, value.to(p.device), key)
        if saved is not None:
            torch.set_rng_state(saved["rng"])

    def save_weights(self, folder: Path) -> dict[str, Any]:
        if self.fsdp:
            return self._save_sharded_weights(Path(folder))
        if self.is_main:
            saved = super().save_weights(folder)
        else:
            saved = {"adapter": "adapter"} if hasattr(self.model, "peft_config") else \
                {"model": str((Path(folder) / "model").resolve())}
        self.sync()
        return saved

    def _save_sharded_weights(self, folder: Path) -> dict[str, Any]:
        """The local engine's adapter folder from the gathered adapter tensors, written by rank 0 alone."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        state = self._trainable(get_model_state_dict(self.model, options=_full_options()))
        if self.is_main:
            from personalign.io import atomic_dir

            with atomic_dir(folder / "adapter") as tmp:
                self.model.save_pretrained(tmp, state_dict=state, safe_serialization=True)
        self.model.eval()
        self.sync()
        return {"adapter": "adapter"}


def _deepspeed_on_cpu(accelerator: Any) -> None:
    """Turn on DeepSpeed where accelerate itself does not: on CPU processes, where it leaves a DeepSpeed config
    as plain multi-CPU data parallelism (gloo). The plugin built from the ACCELERATE_DEEPSPEED_* settings then
    drives accelerate's own DeepSpeed path (`prepare`), exactly as on GPUs."""
    from accelerate.utils import DeepSpeedPlugin, DistributedType

    if not deepspeed_wanted() or accelerator.distributed_type != DistributedType.MULTI_CPU:
        return
    import deepspeed

    # deepspeed's CPU communication backend JIT-compiles a C++ shared-memory all-reduce (its `shm_comm` op,
    # used only by DeepSpeed inference's tensor parallelism, never by ZeRO training) in every process when
    # it starts: 80 s here, and a build killed midway leaves torch's build lock behind, on which every later
    # run waits forever (the "hung" 2-process gloo step). Marked unavailable, deepspeed uses gloo alone.
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    plugin = DeepSpeedPlugin()
    plugin.set_mixed_precision("no")  # the model's own dtype decides, as in the shipped configs
    plugin.select(_from_accelerator_state=True)
    accelerator.state.deepspeed_plugins = plugin
    accelerator.state.distributed_type = DistributedType.DEEPSPEED


def _deepspeed_settings(plugin: Any) -> None:
    """The DeepSpeed settings the protocol needs, set in the plugin's config before `prepare` (after the
    check the CLI makes of a config file, for processes `accelerate launch` started directly)."""
    from personalign.engines.launch import check_deepspeed

    config = plugin.deepspeed_config
    zero = config.get("zero_optimization", {})
    check_deepspeed({"zero_stage": zero.get("stage", 2),
                     "offload_optimizer_device": zero.get("offload_optimizer", {}).get("device", "none"),
                     "offload_param_device": zero.get("offload_param", {}).get("device", "none"),
                     "gradient_accumulation_steps": config.get("gradient_accumulation_steps", 1)}, "engine accelerate")
    # `step` is the accumulation boundary, not a micro-step counter: forward_backward only accumulates.
    config["managed_gradient_accumulation"] = False
    if plugin.is_auto("gradient_accumulation_steps"):
        config["gradient_accumulation_steps"] = 1
    # DeepSpeed sizes only its own data loader and throughput log with these: the engine shards each batch itself.
    if plugin.is_auto("train_micro_batch_size_per_gpu"):
        config["train_micro_batch_size_per_gpu"] = 1
    config.pop("train_batch_size", None)  # derived by DeepSpeed from the two above and the process count


def _full_options(strict: bool = True) -> Any:
    """Whole tensors of the trainable weights only (the frozen base is never checkpointed), on the CPU."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True, strict=strict)


def _by_index(state: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """torch.distributed's name-keyed optimizer state as `torch.optim` keys it (parameter index), so the file is
    the local engine's and a checkpoint resumes under any engine."""
    index = {name: i for i, name in enumerate(names)}
    return {"state": {index[k]: v for k, v in state["state"].items()},
            "param_groups": [{**g, "params": [index[k] for k in g["params"]]} for g in state["param_groups"]]}


def _by_name(state: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """`_by_index` reversed."""
    return {"state": {names[int(i)]: v for i, v in state["state"].items()},
            "param_groups": [{**g, "params": [names[int(i)] for i in g["params"]]} for g in state["param_groups"]]}


def _fsdp_on_cpu(accelerator: Any) -> None:
    """Turn on FSDP where accelerate itself does not: on CPU processes (gloo), where it leaves an FSDP config
    as plain multi-CPU data parallelism. `accelerate launch` with an FSDP config sets ACCELERATE_USE_FSDP and the
    FSDP_* settings; the plugin built from them then drives accelerate's own FSDP2 path (`prepare`,
    `clip_grad_norm_`, `get_state_dict`), exactly as on GPUs."""
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    if not fsdp_wanted() or accelerator.distributed_type != DistributedType.MULTI_CPU:
        return
    plugin = FullyShardedDataParallelPlugin()
    accelerator.state.distributed_type = DistributedType.FSDP
    accelerator.state.fsdp_plugin = plugin
