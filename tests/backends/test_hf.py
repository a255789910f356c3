"""The hf backend on a tiny random llama: chat rendering, seeded sampling, log-probabilities."""

from __future__ import annotations

import math

import pytest
import torch

from personalign.backends.base import truncate_at_stop
from personalign.backends.hf import (
    GeneratedTokensRepetitionPenalty,
    HFBackend,
    NucleusWarper,
    default_batch_size,
    resolve_dtype,
    sequence_logprobs,
)
from personalign.config import ModelConfig, SamplingConfig
from personalign.errors import PersonalignError

CONV = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello to Sam."}]


def test_prompt_ids_equal_apply_chat_template(tiny_backend, chat_tokenizer):
    expected = chat_tokenizer.apply_chat_template(CONV, add_generation_prompt=True, tokenize=True, return_dict=True)
    assert tiny_backend.prompt_ids(CONV) == list(expected["input_ids"])
    text = chat_tokenizer.decode(tiny_backend.prompt_ids(CONV))
    assert text.endswith("<|im_start|>assistant\n")


def test_prompt_completion_split_ends_with_end_of_turn(tiny_backend, chat_tokenizer):
    prompt, completion = tiny_backend.prompt_completion_ids(CONV, "Hello Sam!")
    assert prompt == tiny_backend.prompt_ids(CONV)
    decoded = chat_tokenizer.decode(completion)
    assert decoded.startswith("Hello Sam!")
    assert "<|im_end|>" in decoded


def test_seeded_sampling_is_reproducible_and_seed_sensitive(tiny_backend):
    convs = [CONV, [{"role": "user", "content": "A much longer request about a meeting next week, please."}]]
    params = SamplingConfig(n=3, temperature=1.0, max_new_tokens=12, seed=7)
    first = tiny_backend.generate(convs, params)
    again = tiny_backend.generate(convs, params)
    other = tiny_backend.generate(convs, params.model_copy(update={"seed": 8}))
    assert first == again
    assert first != other
    assert [len(samples) for samples in first] == [3, 3]


def test_greedy_batch_matches_one_at_a_time(tiny_backend):
    convs = [CONV, [{"role": "user", "content": "A much longer request about a meeting next week, please."}]]
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=8)
    together = tiny_backend.generate(convs, greedy)
    alone = [tiny_backend.generate([c], greedy)[0] for c in convs]
    assert together == alone


def test_batch_size_defaults_by_device_and_config_wins(tiny_backend):
    assert (default_batch_size(torch.device("cpu")), default_batch_size(torch.device("cuda"))) == (32, 64)
    assert tiny_backend.batch_size == 32
    explicit = HFBackend(ModelConfig(device="cpu", batch_size=1), model=tiny_backend.model,
                         tokenizer=tiny_backend.tokenizer)
    convs = [CONV, [{"role": "user", "content": "A much longer request about a meeting next week, please."}]]
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=8)
    assert explicit.batch_size == 1 and explicit.generate(convs, greedy) == tiny_backend.generate(convs, greedy)


def test_repetition_penalty_by_hand_spares_prompt_tokens():
    penalty = GeneratedTokensRepetitionPenalty(2.0, prompt_length=2)
    input_ids = torch.tensor([[3, 3, 0, 1]])  # prompt: token 3 twice; generated so far: tokens 0 and 1
    scores = torch.tensor([[2.0, -1.0, 0.5, 4.0]])
    # generated tokens: 2.0 / 2 and -1.0 * 2; token 2 was never seen; prompt token 3 keeps its logit.
    assert penalty(input_ids, scores).tolist() == [[1.0, -2.0, 0.5, 4.0]]
    assert torch.equal(GeneratedTokensRepetitionPenalty(2.0, prompt_length=4)(input_ids, scores), scores)


def test_nucleus_by_hand_keeps_the_smallest_set_reaching_top_p():
    scores = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    # Mass before each token, most likely first: 0, 0.5, 0.8, 0.95; keep while it is below top_p = 0.8.
    kept = NucleusWarper(0.8, candidates=4)(None, scores)
    assert torch.isfinite(kept).tolist() == [[True, True, False, False]]
    assert torch.allclose(kept[0, :2], scores[0, :2])
    assert torch.isfinite(NucleusWarper(0.01, candidates=4)(None, scores)).tolist() == [[True, False, False, False]]


@pytest.mark.parametrize("candidates", [4, 64, 1000])
def test_nucleus_equals_transformers_top_p_including_the_full_sort_fallback(candidates):
    from transformers.generation.logits_process import TopPLogitsWarper

    generator = torch.Generator().manual_seed(0)
    # Peaked rows (nucleus inside few candidates) and a flat row (nucleus beyond them: the fallback path).
    scores = torch.cat([torch.randn(3, 500, generator=generator) * 6, torch.randn(1, 500, generator=generator) * 0.1])
    for top_p in (0.5, 0.9, 0.95):
        ours = NucleusWarper(top_p, candidates=candidates)(None, scores)
        theirs = TopPLogitsWarper(top_p)(None, scores)
        assert torch.equal(torch.isfinite(ours), torch.isfinite(theirs))
        assert torch.equal(ours[torch.isfinite(ours)], scores[torch.isfinite(theirs)])


def test_sampling_with_top_p_uses_the_nucleus_filter_and_greedy_uses_none(tiny_backend):
    processors = tiny_backend.logits_processors(SamplingConfig(temperature=0.7, top_p=0.9), 5)
    assert [type(p) for p in processors] == [NucleusWarper]
    assert not tiny_backend.logits_processors(SamplingConfig(temperature=0.0, top_p=0.9), 5)
    assert not tiny_backend.logits_processors(SamplingConfig(temperature=0.7, top_p=1.0), 5)


def test_repetition_penalty_reaches_generation(tiny_backend):
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=12)
    plain = tiny_backend.generate([CONV], greedy)
    penalized = tiny_backend.generate([CONV], greedy.model_copy(update={"repetition_penalty": 50.0}))
    assert plain != penalized  # a random tiny model repeats itself; a huge penalty must change its greedy path


def test_logprobs_equal_a_manual_token_by_token_sum(tiny_backend):
    prompt, completion = tiny_backend.prompt_completion_ids(CONV, "Hi")
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logp = torch.log_softmax(tiny_backend.model(input_ids=ids).logits[0].float(), dim=-1)
    manual = sum(float(logp[len(prompt) + i - 1, tok]) for i, tok in enumerate(completion))
    got = tiny_backend.logprobs([CONV, CONV], ["Hi", "Hi there, how are you?"])
    assert got[0] == pytest.approx(manual, abs=1e-4)
    assert got[1] < got[0] < 0  # longer completion, more negative log-prob under a random model


def test_sequence_logprobs_is_differentiable(tiny_backend):
    pair = tiny_backend.prompt_completion_ids(CONV, "Hi")
    out = sequence_logprobs(tiny_backend.model, [pair], tiny_backend.tokenizer.pad_token_id, tiny_backend.device)
    out.sum().backward()
    assert any(p.grad is not None for p in tiny_backend.model.parameters())


def test_truncate_at_stop():
    assert truncate_at_stop("Hello\n\nUser: hi", ["User:", "###"]) == "Hello\n\n"
    assert truncate_at_stop("no stop here", ["###"]) == "no stop here"


def test_dtype_resolution():
    assert resolve_dtype("fp32", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    assert resolve_dtype("auto", torch.device("cpu")) in (torch.float32, torch.bfloat16)
    with pytest.raises(PersonalignError, match="dtype 'fp16': use auto, fp32 or bf16"):
        resolve_dtype("fp16", torch.device("cpu"))


def test_loading_from_a_saved_folder_and_clear_errors(tiny_backend, tmp_path):
    tiny_backend.model.save_pretrained(tmp_path / "tiny")
    tiny_backend.tokenizer.save_pretrained(tmp_path / "tiny")
    loaded = HFBackend(ModelConfig(model=str(tmp_path / "tiny"), device="cpu", dtype="fp32"))
    assert loaded.prompt_ids(CONV) == tiny_backend.prompt_ids(CONV)
    with pytest.raises(PersonalignError, match="cannot load model 'no-such-org/no-such-model'"):
        HFBackend(ModelConfig(model="no-such-org/no-such-model", device="cpu"))
    with pytest.raises(PersonalignError, match=r"no adapter_config\.json"):
        HFBackend(ModelConfig(model=str(tmp_path / "tiny"), device="cpu", adapter=str(tmp_path)))
    assert math.isfinite(loaded.logprobs([CONV], ["ok"])[0])
