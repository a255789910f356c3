"""Bradley-Terry reward models: the loss by hand, training on tiny backbones, resume, save/load, the rm judge."""

from __future__ import annotations

import math

import pytest
import torch

from personalign.judges.labeled_sets import LabeledPair
from personalign.judges.reward_model import (
    RewardModel,
    RewardModelConfig,
    RMJudge,
    bradley_terry_loss,
    heldout_loss,
    pairwise_accuracy,
    train_reward_model,
)
from personalign.runs import RunDir


def test_bradley_terry_loss_by_hand():
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0])
    # −log σ(2) = 0.126928, −log σ(−1) = 1.313262 → mean 0.720095
    assert float(bradley_terry_loss(chosen, rejected)) == pytest.approx(0.720095, abs=1e-6)
    # a margin demands a bigger gap: −log σ(2 − 1) = 0.313262, −log σ(−1 − 0) = 1.313262
    margin = torch.tensor([1.0, 0.0])
    assert float(bradley_terry_loss(chosen, rejected, margin)) == pytest.approx((0.313262 + 1.313262) / 2, abs=1e-6)
    assert float(bradley_terry_loss(torch.zeros(1), torch.zeros(1))) == pytest.approx(math.log(2))


def _toy_pairs(n: int, seed: int = 0) -> list[LabeledPair]:
    """Chosen answers thank and commit; rejected ones leave a placeholder: separable by words alone."""
    import random

    rng = random.Random(seed)
    topics = ["meeting", "report", "lunch", "project", "deadline", "budget", "trip", "slides"]
    pairs = []
    for i in range(n):
        topic = rng.choice(topics)
        chosen = f"thanks for the {topic} update i will send it friday"
        rejected = f"dear [your name] the {topic} {topic} placeholder here"
        pairs.append(LabeledPair(f"write about the {topic}", *((chosen, rejected) if i % 2 else (rejected, chosen)),
                                 "B" if i % 2 == 0 else "A"))
    return pairs


def _tiny_bert_rm() -> RewardModel:
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from personalign.judges.reward_model import resolve_backbone

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(resolve_backbone("minilm")[0])
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, num_labels=1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return RewardModel(BertForSequenceClassification(config), tokenizer, "encoder", max_length=64)


def _heldout_loss(rm: RewardModel, pairs: list[LabeledPair]) -> float:
    chosen_rejected = [p.chosen_rejected() for p in pairs]
    prompts = [p.prompt for p in pairs]
    c = torch.tensor(rm.score(prompts, [cr[0] for cr in chosen_rejected]))
    r = torch.tensor(rm.score(prompts, [cr[1] for cr in chosen_rejected]))
    return float(bradley_terry_loss(c, r))


def test_encoder_input_cuts_the_prompt_before_the_response():
    rm = _tiny_bert_rm()  # max_length 64
    prompt = " ".join(f"word{i}" for i in range(120))
    response = "thanks for the report i will send the slides on friday morning"
    ids = rm.encode(prompt, response)
    response_ids = rm.tokenizer(response, add_special_tokens=False)["input_ids"]
    assert len(ids) == 64
    assert ids[-len(response_ids) - 1 : -1] == response_ids  # [CLS] prompt… [SEP] response [SEP]: response whole
    assert rm.tokenizer.decode(ids[1:4]).startswith("word0")  # the prompt keeps its beginning
    long_response = " ".join(f"reply{i}" for i in range(100))
    assert len(rm.encode("short prompt", long_response)) == 64  # only then is the response cut too


def test_tiny_encoder_rm_learns_and_resumes(tmp_path):
    train, heldout = _toy_pairs(48), _toy_pairs(8, seed=1)
    rm = _tiny_bert_rm()
    loss_before = _heldout_loss(rm, heldout)
    config = RewardModelConfig(max_steps=12, batch_size=8, learning_rate=3e-3, eval_every=6, save_every=6,
                               max_length=64)
    run = RunDir(tmp_path / "rm")
    rm, summary = train_reward_model(train, config, run, progress=False, rm=rm, heldout=heldout)
    assert summary["steps"] == 12 and summary["train_pairs"] == 48
    # held-out accuracy was logged every 6 steps, and the final BT loss is below the untrained one
    assert [r["step"] for r in run.metrics if "eval_accuracy" in r] == [6, 12]
    assert _heldout_loss(rm, heldout) < loss_before
    # training reports the BT objective on the held-out pairs, before and after
    assert summary["heldout_loss_before"] == pytest.approx(loss_before, abs=1e-5)
    assert summary["heldout_loss"] == pytest.approx(heldout_loss(rm, heldout), abs=1e-6)
    assert summary["heldout_loss"] < loss_before
    assert summary["heldout_accuracy"] == 1.0
    # resume: a longer run continues from the step-12 checkpoint instead of starting over
    longer = config.model_copy(update={"max_steps": 18})
    rm2, summary2 = train_reward_model(train, longer, run, resume=True, progress=False, rm=_tiny_bert_rm(),
                                       heldout=heldout)
    assert summary2["resumed_from"].endswith("step-000012") and summary2["steps"] == 18
    assert [r["step"] for r in run.metrics if "loss" in r] == list(range(1, 19))  # 1-12, then 13-18 only
    # the saved model reloads with identical scores and works as a judge
    loaded = RewardModel.load(run.path, device="cpu")
    texts = [heldout[0].a, heldout[0].b]
    assert loaded.score(["p", "p"], texts) == pytest.approx(rm2.score(["p", "p"], texts), abs=1e-5)
    verdict = RMJudge(loaded).compare(heldout[0].prompt, heldout[0].a, heldout[0].b)
    assert verdict.winner == heldout[0].label
    assert pairwise_accuracy(loaded, heldout) == 1.0


def test_causal_lm_rm_with_lora_trains_saves_and_reloads(tmp_path, chat_tokenizer):
    from conftest import make_tiny_llama

    base = tmp_path / "tiny-llama"
    make_tiny_llama(chat_tokenizer, hidden=16, layers=1).save_pretrained(base)
    chat_tokenizer.save_pretrained(base)
    config = RewardModelConfig(backbone=str(base), lora=True, lora_r=4, max_steps=4, batch_size=4,
                               learning_rate=1e-2, eval_every=4, save_every=4, max_length=96, device="cpu")
    rm = RewardModel.fresh(config)
    assert rm.kind == "causal"
    # the causal RM reads the chat-rendered conversation, ending with the end-of-turn token
    ids = rm.encode("Say hi", "hello")
    assert chat_tokenizer.decode(ids).endswith("<|im_start|>assistant\nhello<|im_end|>\n")
    run = RunDir(tmp_path / "rm-lora")
    rm, summary = train_reward_model(_toy_pairs(16), config, run, progress=False, rm=rm, heldout=_toy_pairs(4, 2))
    assert summary["lora"] and (run.path / "reward_model" / "adapter_config.json").is_file()
    loaded = RewardModel.load(run.path, device="cpu")
    texts = ["thanks for the note", "dear [your name]"]
    assert loaded.score(["p", "p"], texts) == pytest.approx(rm.score(["p", "p"], texts), abs=1e-4)


def test_bt_training_through_the_engine_is_trl_rewardtrainers_recipe(tmp_path):
    """Same per-step losses as a plain torch loop of TRL RewardTrainer's recipe (AdamW, linear decay, grad-norm
    clip 1, dropout off, chosen + rejected right-padded into one forward, BT loss with margins). Checked
    once against the TRL RewardTrainer path this replaced: max |Δloss| ≤ 3e-6 over 10 steps (fused vs
    unfused AdamW), with and without LoRA and margins."""
    pairs = _toy_pairs(8)
    for i, pair in enumerate(pairs):
        pair.margin = 0.25 * (i % 3)
    config = RewardModelConfig(learning_rate=3e-2, max_steps=6, batch_size=8, eval_every=100, save_every=100)
    run = RunDir(tmp_path / "rm")
    train_reward_model(pairs, config, run, progress=False, rm=_tiny_bert_rm(), heldout=[])
    engine_losses = [r["loss"] for r in run.metrics if "loss" in r]

    from personalign.methods.training import batch_indices

    rm = _tiny_bert_rm()  # the same initial weights (seeded)
    encoded = [(rm.encode(p.prompt, p.chosen_rejected()[0]), rm.encode(p.prompt, p.chosen_rejected()[1]), p.margin)
               for p in pairs]
    optimizer = torch.optim.AdamW(rm.model.parameters(), lr=3e-2, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: (6 - s) / 6)
    rm.model.eval()  # TRL's disable_dropout
    plain = []
    for step in range(6):
        # the engine's seeded pair order (it matters: this toy run amplifies float-order differences ~10×/step)
        batch = [encoded[i] for i in batch_indices(8, 8, step, seed=0)]
        seqs = [c for c, _, _ in batch] + [r for _, r, _ in batch]
        width = max(map(len, seqs))
        ids = torch.tensor([s + [rm.tokenizer.pad_token_id] * (width - len(s)) for s in seqs])
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
        c, r = rm.model(input_ids=ids, attention_mask=mask).logits.squeeze(-1).chunk(2)
        loss = bradley_terry_loss(c, r, torch.tensor([m for _, _, m in batch]))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(rm.model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        plain.append(float(loss.detach()))
    assert engine_losses == pytest.approx(plain, abs=1e-6)
    assert plain[-1] < plain[0] - 0.1  # it moved: the comparison is not of a flat line


def test_a_bt_rm_needs_an_engine_with_a_score_head(tiny_backend):
    from personalign.engines.base import Datum, LoraSettings, ScoreLoss
    from personalign.engines.local import LocalEngine
    from personalign.errors import PersonalignError
    from personalign.judges.reward_model import check_engine

    with pytest.raises(PersonalignError, match="engine 'tinker' has no scalar score head"):
        check_engine(RewardModelConfig(engine="tinker"))
    check_engine(RewardModelConfig(kind="gen-rm", engine="tinker"))  # a generative judge needs no score head
    engine = LocalEngine(tiny_backend, LoraSettings())  # a causal LM: no score head either
    with pytest.raises(PersonalignError, match="no scalar score head"):
        engine.forward_backward([Datum([1, 2], [])], ScoreLoss(lambda data, scores: (scores.sum(), {})))
