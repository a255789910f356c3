"""The client-side renderer agrees with the tokenizer's own chat template, and marks truncated samples."""

from __future__ import annotations

import pytest

from personalign.engines.base import SampledSequence
from personalign.engines.render import ChatRenderer

CHATS = [
    [{"role": "user", "content": "Say hi to Al."}],
    [{"role": "system", "content": "You are Zed. Sign off with Cheers."}, {"role": "user", "content": "Greet Bo."}],
    [{"role": "user", "content": "One?"}, {"role": "assistant", "content": "Two."},
     {"role": "user", "content": "Three?"}],
]


@pytest.mark.parametrize("chat", CHATS)
def test_rendered_ids_equal_apply_chat_template(chat_tokenizer, chat):
    renderer = ChatRenderer(chat_tokenizer)
    reply = "Hi there.\n\nCheers,\nZed"
    prompt, completion = renderer.prompt_completion_ids(chat, reply)
    full = chat_tokenizer.apply_chat_template([*chat, {"role": "assistant", "content": reply}], tokenize=True,
                                              return_dict=True)["input_ids"]
    assert prompt + completion == list(full)  # training sees exactly the template's tokens
    generation = chat_tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True,
                                                    return_dict=True)["input_ids"]
    assert prompt == list(generation)  # ... and sampling starts from exactly the template's prompt
    end_of_turn = chat_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert end_of_turn in completion
    # A sample that hit the token limit is the same reply tokens without the end-of-turn the model never produced.
    _, cut = renderer.prompt_completion_ids(chat, reply, ended=False)
    assert end_of_turn not in cut and completion[: len(cut)] == cut


def test_backend_renders_through_the_renderer(tiny_backend):
    renderer = ChatRenderer(tiny_backend.tokenizer)
    for chat in CHATS:
        assert tiny_backend.prompt_ids(chat) == renderer.prompt_ids(chat)
        assert tiny_backend.prompt_completion_ids(chat, "ok") == renderer.prompt_completion_ids(chat, "ok")


def test_decode_reports_whether_a_sample_ended(chat_tokenizer):
    renderer = ChatRenderer(chat_tokenizer)
    tokens = chat_tokenizer("Hi Al. STOP and more", add_special_tokens=False)["input_ids"]
    assert renderer.decode(SampledSequence(tokens, "length")) == ("Hi Al. STOP and more", False)
    assert renderer.decode(SampledSequence(tokens, "stop")) == ("Hi Al. STOP and more", True)
    # a stop string ends it
    assert renderer.decode(SampledSequence(tokens, "length"), stop=["STOP"]) == ("Hi Al.", True)
