"""Request bodies of the OpenAI chat API (and vLLM's extensions we implement), validated with pydantic."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Strict(BaseModel):
    # Unknown fields are a 400 naming the field, never silently ignored.
    model_config = ConfigDict(extra="forbid")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatCompletionRequest(_Strict):
    """OpenAI's fields; unset sampling fields take `SamplingConfig`'s defaults, the same as `personalign generate`."""

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=16)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: dict[str, bool] | None = None
    user: str | None = None
    logprobs: bool | None = None
    # vLLM's extensions: its repetition penalty, and log-probs of the prompt tokens (how a given completion is
    # scored over HTTP: send it as the final assistant message with add_generation_prompt false).
    repetition_penalty: float | None = Field(None, gt=0.0)
    prompt_logprobs: int | None = Field(None, ge=0, le=0)
    add_generation_prompt: bool = True
    continue_final_message: bool = False

    @field_validator("stop")
    @classmethod
    def _at_most_four(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value

    @field_validator("logprobs")
    @classmethod
    def _no_output_logprobs(cls, value: bool | None) -> bool | None:
        if value:
            raise ValueError("output logprobs are not supported; use prompt_logprobs to score a given completion")
        return value

    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class TokenizeRequest(_Strict):
    """vLLM's `/tokenize` for chats."""

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    add_generation_prompt: bool = True
    continue_final_message: bool = False


class LoadAdapterRequest(_Strict):
    """vLLM's `/v1/load_lora_adapter` body."""

    lora_name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._+-]+$")
    lora_path: str = Field(min_length=1)
    load_inplace: bool = False


class UnloadAdapterRequest(_Strict):
    lora_name: str = Field(min_length=1)
    lora_int_id: int | None = None
