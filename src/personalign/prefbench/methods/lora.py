"""`lora`: the fine-tuning mode — the backbone itself is trained (LoRA adapters) together with a reward head.

Same interface as every method, but it reads the pair *texts* (`PairSet.texts` with `a_idx`/`b_idx`) and
re-embeds them through the adapted backbone instead of using the cached embeddings. `head=personalized`
is P-RM (shared + user offsets, α·user + (1 − α)·generic loss), the strongest variant in Dong et al.;
`head=vanilla` one shared RM. The backbone is MiniLM by default (mean pooling, as sentence-transformers
does), or any Hugging Face encoder / causal LM folder. The backbone runs on `device` (a GPU when there is
one); the small head stays on the CPU like every other method's, and gradients cross over through the
copy. Costly on CPU: not part of `--methods all`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from personalign.config import Config
from personalign.errors import PersonalignError
from personalign.prefbench.methods.base import PairSet, PrefMethod, RewardMLP, bt_loss, train_minibatch
from personalign.prefbench.methods.personalized import PRM


class LoRAOptions(Config):
    backbone: str = Field("minilm", description="'minilm' (packaged) or a Hugging Face model folder / hub id")
    head: Literal["personalized", "vanilla"] = "personalized"
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="P-RM's weight of the user-specific loss")
    rank: int = Field(8, ge=1, description="LoRA rank")
    lora_alpha: int = Field(16, ge=1)
    steps: int = Field(100, ge=1, description="optimizer steps (each a batch of pairs)")
    batch_size: int = Field(16, ge=1, description="pairs per step (two texts each)")
    lr: float = Field(2e-4, gt=0)
    max_length: int = Field(256, ge=8, description="tokens per text")
    embed_batch: int = Field(64, ge=1, description="texts per forward pass when scoring")
    device: str = Field("auto", description="where the backbone runs: auto (a GPU if visible), cpu, cuda, ...")


def target_modules(model: nn.Module) -> list[str]:
    """Attention projections to adapt: BERT-style `query`/`value`, or `q_proj`/`v_proj` in causal LMs."""
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    for pair in (["query", "value"], ["q_proj", "v_proj"], ["c_attn"]):
        if set(pair) <= names:
            return pair
    raise PersonalignError("lora: cannot find attention projections (query/value, q_proj/v_proj, c_attn) to adapt")


class LoRAEncoder(nn.Module):
    """Texts → mean-pooled, L2-normalized embeddings from a LoRA-adapted backbone."""

    def __init__(self, backbone: str, rank: int, lora_alpha: int, max_length: int, device: str = "cpu"):
        super().__init__()
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModel, AutoTokenizer

        from personalign.backends.embedder import resolve_embedder_path
        from personalign.backends.hf import resolve_device

        path = resolve_embedder_path(backbone)
        from personalign.settings import quiet_third_party

        quiet_third_party()  # bench workers are spawned processes: the CLI's silencing does not reach them
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            base = AutoModel.from_pretrained(path)
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise PersonalignError(f"lora: cannot load backbone {backbone!r} ({first})") from None
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        config = LoraConfig(r=rank, lora_alpha=lora_alpha, lora_dropout=0.0, target_modules=target_modules(base))
        self.device = resolve_device(device)
        self.model = get_peft_model(base, config).to(self.device)
        self.max_length = max_length
        self.dim = int(base.config.hidden_size)

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt").to(self.device)
        hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return nn.functional.normalize(pooled, dim=-1).float().cpu()


class LoRA(PrefMethod):
    name = "lora"
    Options = LoRAOptions

    def _texts(self, pairs: PairSet) -> tuple[Sequence[str], np.ndarray, np.ndarray]:
        if pairs.texts is None or pairs.a_idx is None or pairs.b_idx is None:
            raise PersonalignError("lora reads pair texts; build pairs with prefbench.features (texts + a_idx/b_idx)")
        return pairs.texts, pairs.a_idx, pairs.b_idx

    def _reward(self, emb: torch.Tensor, users: torch.Tensor | None) -> torch.Tensor:
        return self.head(emb) if isinstance(self.head, RewardMLP) else self.head(emb, users)

    def _fit(self, pairs: PairSet) -> None:
        o = self.options
        texts, a_idx, b_idx = self._texts(pairs)
        self.encoder = LoRAEncoder(o.backbone, o.rank, o.lora_alpha, o.max_length, o.device)
        dim = self.encoder.dim
        self.head = PRM(dim, self.train_cfg.hidden, self.n_users) if o.head == "personalized" else \
            RewardMLP(dim, self.train_cfg.hidden)
        users = torch.from_numpy(pairs.users)

        def loss(idx: torch.Tensor) -> torch.Tensor:
            rows = idx.numpy()
            emb = self.encoder([texts[i] for i in a_idx[rows]] + [texts[i] for i in b_idx[rows]])
            ea, eb = emb[: len(rows)], emb[len(rows):]
            if isinstance(self.head, RewardMLP):
                return bt_loss(self.head(ea) - self.head(eb))
            u = users[idx]
            user = bt_loss(self.head(ea, u) - self.head(eb, u))
            generic = bt_loss(self.head(ea, None) - self.head(eb, None))
            return o.alpha * user + (1 - o.alpha) * generic

        params = [p for p in self.encoder.parameters() if p.requires_grad] + list(self.head.parameters())
        cfg = self.train_cfg.model_copy(update={"lr": o.lr, "batch_size": o.batch_size})
        self.encoder.train()
        self.losses = train_minibatch(params, loss, len(pairs), cfg, self.seed, steps=o.steps)
        self.encoder.eval()
        self._memo: dict[str, torch.Tensor] = {}

    def embed(self, texts: Sequence[str], ids: np.ndarray) -> dict[int, torch.Tensor]:
        """Embeddings of the distinct texts `ids` through the adapted backbone (no gradient). The backbone is
        frozen after fit, so vectors are memoized by text: a tax set scored once per user embeds once."""
        out: dict[int, torch.Tensor] = {}
        todo = [int(i) for i in np.unique(ids) if texts[int(i)] not in self._memo]
        with torch.no_grad():
            for s in range(0, len(todo), self.options.embed_batch):
                chunk = todo[s : s + self.options.embed_batch]
                for i, e in zip(chunk, self.encoder([texts[j] for j in chunk]), strict=True):
                    self._memo[texts[i]] = e
        for i in np.unique(ids):
            out[int(i)] = self._memo[texts[int(i)]]
        return out

    def _margins(self, pairs: PairSet) -> np.ndarray:
        texts, a_idx, b_idx = self._texts(pairs)
        emb = self.embed(texts, np.concatenate([a_idx, b_idx]))
        ea = torch.stack([emb[int(i)] for i in a_idx])
        eb = torch.stack([emb[int(i)] for i in b_idx])
        users = None if isinstance(self.head, RewardMLP) else torch.from_numpy(pairs.users)
        return (self._reward(ea, users) - self._reward(eb, users)).numpy()

    def _add_user(self, uid: int, pairs: PairSet) -> None:
        """P-RM head: a new offset fitted on the adapted embeddings (backbone and shared head frozen)."""
        if isinstance(self.head, RewardMLP):
            return
        texts, a_idx, b_idx = self._texts(pairs)
        emb = self.embed(texts, np.concatenate([a_idx, b_idx]))
        ea = torch.stack([emb[int(i)] for i in a_idx])
        eb = torch.stack([emb[int(i)] for i in b_idx])
        frozen = self.head.offsets.detach()
        row = nn.Parameter(torch.zeros(1, frozen.shape[1]))
        for p in self.head.parameters():
            p.requires_grad_(False)

        def loss(idx: torch.Tensor) -> torch.Tensor:
            table = torch.cat([frozen, row])
            u = torch.full((len(idx),), uid, dtype=torch.long)
            return bt_loss(self.head(ea[idx], u, table) - self.head(eb[idx], u, table))

        train_minibatch([row], loss, len(pairs), self.train_cfg, self.seed + uid, weight_decay=0.0)
        for p in self.head.parameters():
            p.requires_grad_(True)
        self.head.offsets = nn.Parameter(torch.cat([frozen, row.detach()]))
