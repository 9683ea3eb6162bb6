"""Request and response models of the OpenAI API subset tunery serves, with OpenAI's field names.

Requests are strict: unknown fields, wrong types (no coercion: `true` is not 1, "5" is not 5) and
text with NULs or lone surrogates are 400s. Caps that depend on server settings (n, stop,
max_tokens) are checked by the handlers, which know them.
"""

from __future__ import annotations

import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator, model_validator

from tunery.safeio import check_text


def _find_unclean_text(value, path: str = "") -> str | None:
    if isinstance(value, str):
        problem = check_text(value)
        return f"{path or 'body'}: text {problem}" if problem else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        where = f"{path}.{key}" if path else str(key)
        found = (_find_unclean_text(key, where) if isinstance(key, str) else None) or _find_unclean_text(item, where)
        if found:
            return found
    return None


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _clean_text(cls, data):
        # Every string of every request, new fields included: a lone surrogate cannot reach the
        # tokenizer or the store (where it was a 500), a NUL cannot reach a C string.
        problem = _find_unclean_text(data)
        if problem:
            raise ValueError(problem)
        return data


class TextPart(_Request):
    type: Literal["text"]
    text: str


class FunctionCall(_Request):
    name: str
    arguments: str


class ToolCall(_Request):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    @property
    def template_role(self) -> str:
        """OpenAI's newer `developer` role is what chat templates call `system`."""
        return "system" if self.role == "developer" else self.role

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class JsonSchemaFormat(_Request):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    schema_: dict | None = Field(None, alias="schema")
    strict: bool | None = False


class ResponseFormat(_Request):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_with_its_type(self):
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format of type json_schema needs a json_schema object")
        return self


class FunctionDefinition(_Request):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    parameters: dict | None = None
    strict: bool | None = False


class Tool(_Request):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Request):
    name: str


class NamedToolChoice(_Request):
    type: Literal["function"]
    function: NamedFunction


class StreamOptions(_Request):
    include_usage: bool = False


class _SamplingFields(_Request):
    model: str = Field(min_length=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = None
    user: str | None = None
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None

    def logit_bias_pairs(self) -> tuple[tuple[int, float], ...]:
        """`logit_bias` as (token id, bias) pairs; keys must be token ids, values within ±100 (as OpenAI)."""
        pairs = []
        for key, value in (self.logit_bias or {}).items():
            if not key.strip().isdigit() or not -100 <= value <= 100:
                raise ValueError(f"logit_bias maps token ids to values from -100 to 100; got {key!r}: {value}")
            pairs.append((int(key), float(value)))
        return tuple(pairs)

    @model_validator(mode="before")
    @classmethod
    def _null_means_default(cls, data):
        # Some clients send every optional field, unset ones as null: treat those as absent.
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None or k in ("model", "messages", "prompt")}
        return data

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)

    @field_validator("messages")
    @classmethod
    def _last_message_is_not_empty(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        if all(not m.text().strip() for m in messages):
            raise ValueError("every message is empty")
        return messages

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_SamplingFields):
    prompt: str | list[str] = Field(min_length=1)
    max_tokens: int | None = Field(16, ge=1)
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=5)

    def prompt_text(self) -> str:
        if isinstance(self.prompt, list):
            if len(self.prompt) != 1:
                raise ValueError("send one prompt per request")
            return self.prompt[0]
        return self.prompt


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ResponseFunctionCall(BaseModel):
    name: str
    arguments: str


class ResponseToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: ResponseFunctionCall


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ResponseToolCall] | None = None


class ChatLogprobs(BaseModel):
    content: list[dict] | None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: str | None
    logprobs: ChatLogprobs | None = None


class TuneryExtension(BaseModel):
    """tunery's own response field (OpenAI clients ignore it): the sources a retrieval model read."""

    citations: list[dict] = Field(default_factory=list)


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: Usage
    tunery: TuneryExtension | None = None


class DeltaToolCall(BaseModel):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: dict | None = None


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[DeltaToolCall] | None = None

    @field_serializer("tool_calls")
    def _calls_without_nulls(self, calls: list[DeltaToolCall] | None):
        # As OpenAI streams them: a later piece of a call carries only `index` and its argument text.
        # Stream helpers merge pieces key by key, so a null `type` would erase the first piece's.
        return None if calls is None else [c.model_dump(exclude_none=True) for c in calls]


class ChatChunkChoice(BaseModel):
    index: int
    delta: DeltaMessage
    finish_reason: str | None = None
    logprobs: ChatLogprobs | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    tunery: TuneryExtension | None = None  # on the opening chunk of a retrieval model's answer


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: str | None
    logprobs: dict | None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    tunery: TuneryExtension | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "tunery"
    parent: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class FeedbackRequest(_Request):
    completion_id: str = Field(min_length=1, max_length=200)
    rating: int = Field(description="1 (good) or -1 (bad); a JSON integer, not `true`.")
    correction: str | None = Field(None, max_length=100_000)
    comment: str | None = Field(None, max_length=10_000)

    @field_validator("rating")
    @classmethod
    def _one_or_minus_one(cls, rating: int) -> int:
        # Literal[1, -1] would let `true` and `1.0` through (they compare equal to 1).
        if rating not in (1, -1):
            raise ValueError("rating must be 1 or -1")
        return rating


class LoadAdapterRequest(_Request):
    name: str = Field(description="Identifier clients will pass as `model`.")
    run: str = Field(description="A run name under TUNERY_HOME/runs, or a run directory configured at start.")


class CreateKeyRequest(_Request):
    name: str = Field("", max_length=200)
    admin: bool = False


class EmbeddingRequest(_Request):
    model: str
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # base64 of little-endian float32 when asked


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage

