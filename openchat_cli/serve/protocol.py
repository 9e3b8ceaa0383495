"""Request and response shapes of the OpenAI API subset we serve (pydantic v2).

Requests are validated strictly ("0.7" is not a temperature) and unknown fields are refused,
as OpenAI does; fields OpenAI defines that a local model cannot honour (tools, chat logprobs)
are accepted only with their neutral values so
that SDKs sending defaults keep working, and refused with a clear 400 otherwise. Text
completions support `logprobs` and `echo` as the legacy completions API and vLLM define them
(what log-likelihood evals such as lm-evaluation-harness's `local-completions` send).
Errors raised here become `{"error": {"message", "type", "param", "code"}}` in `app.py`.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

MAX_STOP = 16
MAX_LOGPROBS = 20  # top alternatives per token (vLLM's default max_logprobs)
MAX_SEED = 2**63 - 1
MAX_DEPTH = 32  # arrays/objects in a request nest far less; deeper ones would only cost recursion


def printable(text: str) -> str:
    """`text` safe to encode as UTF-8: lone surrogates written as `\\udXXX` escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def find_surrogate(value: Any) -> tuple[str, str] | None:
    """(path, escaped character) of the first lone UTF-16 surrogate in a JSON value, keys
    included. JSON allows `"\\ud800"`, Python decodes it, and neither UTF-8 nor a tokenizer
    can take it: such text is refused up front, naming the field. Iterative: any depth."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, str):
            for i, ch in enumerate(item):
                if "\ud800" <= ch <= "\udfff":
                    return path, f"{printable(ch)} at character {i}"
        elif isinstance(item, dict):
            children = []
            for key, child in item.items():
                sub = f"{path}.{printable(str(key))}" if path else printable(str(key))
                children += [(sub, child), (sub, key)]
            stack.extend(reversed(children))
        elif isinstance(item, list):
            stack.extend(reversed([(f"{path}[{i}]", child) for i, child in enumerate(item)]))
    return None


def nesting_depth(value: Any, limit: int) -> int:
    """How deep arrays and objects nest in `value`, counting no further than `limit + 1`."""
    deepest = 0
    stack: list[tuple[int, Any]] = [(0, value)]
    while stack:
        depth, item = stack.pop()
        if isinstance(item, (dict, list)):
            depth += 1
            deepest = max(deepest, depth)
            if depth > limit:
                return depth
            stack.extend((depth, child) for child in (item.values() if isinstance(item, dict)
                                                       else item))
    return deepest


def whole_number(value: Any) -> Any:
    """JSON has one number type: 2.0 is the integer 2 (JSON Schema agrees), 2.5 is not."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


JsonInt = Annotated[StrictInt, BeforeValidator(whole_number)]
# Bounds inside the Annotated: on a union pydantic would write them into the schema as "ge".
MAX_LOGIT_BIAS = 300  # OpenAI's limit on logit_bias entries
TopK = Annotated[StrictInt, Field(ge=-1), BeforeValidator(whole_number)]
Count = Annotated[StrictInt, Field(ge=1), BeforeValidator(whole_number)]
Seed = Annotated[StrictInt, Field(ge=-MAX_SEED, le=MAX_SEED), BeforeValidator(whole_number)]
TokenBudget = Annotated[StrictInt, Field(ge=0), BeforeValidator(whole_number)]
LogprobCount = Annotated[StrictInt, Field(ge=0, le=MAX_LOGPROBS), BeforeValidator(whole_number)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _no_lone_surrogates(cls, data: Any) -> Any:
        found = find_surrogate(data) if isinstance(data, dict) else None
        if found:
            raise PydanticCustomError(
                "lone_surrogate", "the text holds a lone UTF-16 surrogate ({char}), which is not "
                "valid Unicode", {"field": found[0], "char": found[1]})
        return data


# -- pieces -----------------------------------------------------------------------------------
class TextPart(_Request):
    type: Literal["text"] = "text"
    text: StrictStr


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant"] = Field(
        description="'developer' is treated as 'system'; tool and function roles are not supported.")
    content: str | list[TextPart] | None = Field(
        default=None, description="A string or a list of text content parts.")
    name: StrictStr | None = None
    refusal: StrictStr | None = None
    tool_calls: list[Any] | None = Field(default=None, json_schema_extra={"maxItems": 0},
                                         description="Only empty: tool calling is not supported.")

    @field_validator("role", mode="before")
    @classmethod
    def _role(cls, value: Any) -> Any:
        if value in ("tool", "function"):
            raise PydanticCustomError("unsupported", "role '{role}' is not supported (no tool calling)",
                                      {"role": value})
        if not isinstance(value, str) or value not in ("system", "developer", "user", "assistant"):
            raise PydanticCustomError(
                "literal_error", "role must be one of 'system', 'developer', 'user', 'assistant', "
                "got '{value}'" if isinstance(value, str) else "role must be a string",
                {"value": value})
        return value

    @field_validator("content", mode="before")
    @classmethod
    def _content(cls, value: Any) -> Any:
        if value is None or isinstance(value, str):
            return value
        if not isinstance(value, list):
            raise PydanticCustomError("content_type", "content must be a string or a list of text parts")
        for i, part in enumerate(value):
            if not isinstance(part, dict):
                raise PydanticCustomError("content_type", "content[{i}] must be an object", {"i": i})
            kind = part.get("type", "text")
            if kind != "text":
                raise PydanticCustomError(
                    "unsupported", "content[{i}] has type '{kind}': only 'text' parts are supported",
                    {"i": i, "kind": kind})
            if not isinstance(part.get("text"), str):
                raise PydanticCustomError("content_type", "content[{i}].text must be a string",
                                          {"i": i})
        return value

    @field_validator("tool_calls")
    @classmethod
    def _no_tools(cls, value: Any) -> Any:
        if value:
            raise PydanticCustomError("unsupported", "tool calls are not supported")
        return value

    def to_template_dict(self) -> dict[str, Any]:
        """The message as the shared conversation template reads it."""
        role = "system" if self.role == "developer" else self.role
        content = self.content
        if isinstance(content, list):
            content = [p.model_dump() for p in content]
        return {"role": role, "content": content}


class StreamOptions(_Request):
    include_usage: StrictBool = False
    continuous_usage_stats: StrictBool = False


def _stop_list(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PydanticCustomError("stop_type", "stop must be a string or a list of strings")
    if len(value) > MAX_STOP:
        raise PydanticCustomError("stop_count", "at most {n} stop strings are allowed", {"n": MAX_STOP})
    if any(v == "" for v in value):
        raise PydanticCustomError("stop_empty", "stop strings must not be empty")
    return value


class _Sampling(_Request):
    """Fields shared by chat and text completions."""

    model: StrictStr = Field(description="The served model name (see GET /v1/models).")
    temperature: StrictFloat | None = Field(default=None, ge=0.0, le=2.0,
                                            description="0 means greedy. Default 1.")
    top_p: StrictFloat | None = Field(default=None, ge=0.0, le=1.0)
    top_k: TopK | None = Field(default=None,
                                    description="vLLM extension: sample from the k most likely "
                                                "tokens (0 or -1 = off).")
    n: Count = Field(default=1, description="Number of choices.")
    stop: str | list[str] | None = Field(
        default=None, description="Up to 16 stop strings.",
        json_schema_extra={"minLength": 1, "maxItems": MAX_STOP, "items": {"type": "string",
                                                                        "minLength": 1}})
    seed: Seed | None = None
    presence_penalty: StrictFloat | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: StrictFloat | None = Field(default=None, ge=-2.0, le=2.0)
    min_p: StrictFloat | None = Field(default=None, ge=0.0, le=1.0,
                                      description="vLLM extension: drop tokens less likely than "
                                                  "min_p x the most likely one (0 = off).")
    repetition_penalty: StrictFloat | None = Field(
        default=None, gt=0.0, le=10.0,
        description="vLLM extension: >1 discourages tokens already in the prompt or reply (1 = off).")
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    user: StrictStr | None = None
    ignore_eos: StrictBool = Field(default=False,
                                   description="vLLM extension: keep generating past end-of-turn "
                                               "(benchmarks).")
    logit_bias: dict[str, float] | None = Field(
        default=None, description="Token id (as a string) -> bias added to its logit (-100..100).",
        json_schema_extra={"maxProperties": MAX_LOGIT_BIAS, "propertyNames": {"pattern": "^[0-9]{1,9}$"},
                           "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100}})
    # Defined by OpenAI, accepted only with neutral values.
    metadata: dict[str, str] | None = None
    store: StrictBool | None = None
    service_tier: StrictStr | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _stop(cls, value: Any) -> Any:
        return _stop_list(value)

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias(cls, value: Any) -> Any:
        for key, bias in (value or {}).items():
            if not key.isdigit() or len(key) > 9:
                raise PydanticCustomError("logit_bias", "logit_bias keys must be token ids, got {key!r}",
                                          {"key": key})
            if not -100.0 <= bias <= 100.0:
                raise PydanticCustomError("logit_bias", "logit_bias values must be between -100 and 100, "
                                          "got {bias} for token {key}", {"key": key, "bias": bias})
        if value and len(value) > MAX_LOGIT_BIAS:
            raise PydanticCustomError("logit_bias", "logit_bias holds at most {limit} tokens",
                                      {"limit": MAX_LOGIT_BIAS})
        return value

    def logit_bias_pairs(self) -> tuple[tuple[int, float], ...]:
        """`logit_bias` as (token id, bias) pairs, sorted by token id."""
        return tuple(sorted((int(k), float(v)) for k, v in (self.logit_bias or {}).items()))

    @field_validator("stream_options")
    @classmethod
    def _stream_options(cls, value: Any) -> Any:
        return value

    def stop_strings(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


# Rules between fields, so the schema accepts only what the server does.
STREAM_OPTIONS_NEED_STREAM = {
    "if": {"properties": {"stream_options": {"type": "object"}}, "required": ["stream_options"]},
    "then": {"properties": {"stream": {"const": True}}, "required": ["stream"]}}
ZERO_TOKENS_NEED_ECHO = {
    "if": {"properties": {"max_tokens": {"const": 0}}, "required": ["max_tokens"]},
    "then": {"properties": {"echo": {"const": True}}, "required": ["echo"]}}


class ChatCompletionRequest(_Sampling):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"allOf": [STREAM_OPTIONS_NEED_STREAM]})

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: Count | None = None
    max_completion_tokens: Count | None = None
    condition: StrictStr | None = Field(
        default=None, description="OpenChat condition, e.g. 'GPT4 Correct' or 'Math Correct' "
                                  "(default: the template's).")
    logprobs: StrictBool | None = Field(default=None, json_schema_extra={"enum": [False, None]})
    top_logprobs: JsonInt | None = Field(default=None, json_schema_extra={"enum": [0, None]})
    tools: list[Any] | None = Field(default=None, json_schema_extra={"maxItems": 0})
    tool_choice: Any = Field(default=None, json_schema_extra={"enum": [None, "none", "auto"]})
    parallel_tool_calls: StrictBool | None = None
    functions: list[Any] | None = Field(default=None, json_schema_extra={"maxItems": 0})
    function_call: Any = Field(default=None, json_schema_extra={"enum": [None, "none", "auto"]})
    response_format: dict[str, Any] | None = Field(
        default=None, description="text, json_object, or json_schema (constrained decoding).",
        json_schema_extra={"oneOf": [
            {"properties": {"type": {"enum": ["text", "json_object"]}}},
            {"properties": {"type": {"const": "json_schema"},
                            "json_schema": {"type": "object", "required": ["name"],
                                            "properties": {"name": {"type": "string"},
                                                           "description": {"type": "string"},
                                                           "strict": {"type": ["boolean", "null"]},
                                                           "schema": {"type": "object", "maxProperties": 0}}}},
             "required": ["type", "json_schema"]}]})
    modalities: list[str] | None = Field(default=None, json_schema_extra={"items": {"const": "text"}})
    reasoning_effort: StrictStr | None = None

    @field_validator("messages", mode="before")
    @classmethod
    def _messages(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise PydanticCustomError("messages_empty", "messages must contain at least one message")
        return value

    @field_validator("logprobs")
    @classmethod
    def _logprobs(cls, value: Any) -> Any:
        if value:
            raise PydanticCustomError("unsupported", "logprobs are not supported")
        return value

    @field_validator("top_logprobs")
    @classmethod
    def _top_logprobs(cls, value: Any) -> Any:
        if value:
            raise PydanticCustomError("unsupported", "top_logprobs are not supported")
        return value

    @field_validator("tools", "functions")
    @classmethod
    def _tools(cls, value: Any) -> Any:
        if value:
            raise PydanticCustomError("unsupported", "tool calling is not supported")
        return value

    @field_validator("tool_choice", "function_call")
    @classmethod
    def _tool_choice(cls, value: Any) -> Any:
        if value not in (None, "none", "auto"):
            raise PydanticCustomError("unsupported", "tool calling is not supported")
        return value

    @field_validator("response_format")
    @classmethod
    def _response_format(cls, value: Any) -> Any:
        if value and value.get("type", "text") not in ("text", "json_object", "json_schema"):
            raise PydanticCustomError("unsupported", "response_format type must be text, json_object "
                                      "or json_schema")
        return value

    @field_validator("modalities")
    @classmethod
    def _modalities(cls, value: Any) -> Any:
        if value and any(m != "text" for m in value):
            raise PydanticCustomError("unsupported", "only the 'text' modality is supported")
        return value

    def requested_max_tokens(self) -> tuple[int | None, str]:
        """The completion budget asked for, and the field that asked for it."""
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens, "max_completion_tokens"
        return self.max_tokens, "max_tokens"


class CompletionRequest(_Sampling):
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "allOf": [STREAM_OPTIONS_NEED_STREAM, ZERO_TOKENS_NEED_ECHO]})

    prompt: (str | Annotated[list[str], Field(min_length=1)]
             | Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]
             | Annotated[list[Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]],
                         Field(min_length=1)]) = Field(
        description="Text, a list of texts, token ids, or a list of token-id lists.")
    max_tokens: TokenBudget | None = Field(
        default=16, description="0 only with echo: score the prompt, generate nothing.")
    echo: StrictBool = Field(default=False, description="Return the prompt before the completion "
                                                        "(with its token logprobs when logprobs is set).")
    best_of: Literal[1] | None = Field(
        default=None, description="Only 1: each choice is sampled once (no server-side reranking).")
    logprobs: LogprobCount | None = Field(
        default=None,
        description=f"Return each token's logprob and its 0-{MAX_LOGPROBS} most likely alternatives.")
    add_special_tokens: StrictBool = Field(
        default=True, description="vLLM extension: let the tokenizer add its special tokens (BOS) "
                                  "to text prompts.")
    suffix: StrictStr | None = Field(default=None, json_schema_extra={"maxLength": 0})

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt(cls, value: Any) -> Any:
        def is_ids(v: Any) -> bool:
            return isinstance(v, list) and bool(v) and all(isinstance(t, int) and not isinstance(t, bool)
                                                           and t >= 0 for t in v)

        if isinstance(value, str):
            return value
        if isinstance(value, list) and value:
            value = [[whole_number(t) for t in v] if isinstance(v, list) else whole_number(v)
                     for v in value]
            if all(isinstance(v, str) for v in value) or is_ids(value) or all(is_ids(v) for v in value):
                return value
        raise PydanticCustomError(
            "prompt_type", "prompt must be a string, a non-empty list of strings, a list of token "
                           "ids, or a list of token-id lists")

    @field_validator("best_of", mode="before")
    @classmethod
    def _best_of(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool) and value != 1:
            raise PydanticCustomError("unsupported", "only best_of 1 is supported (each choice is "
                                                     "sampled once)")
        return value

    @field_validator("suffix")
    @classmethod
    def _suffix(cls, value: Any) -> Any:
        if value:
            raise PydanticCustomError("unsupported", "suffix is not supported")
        return value

    def prompts(self) -> list[str | list[int]]:
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if p and isinstance(p[0], int):
            return [list(p)]  # type: ignore[list-item]
        return list(p)  # type: ignore[arg-type]

    def requested_max_tokens(self) -> tuple[int | None, str]:
        return self.max_tokens, "max_tokens"


# -- responses --------------------------------------------------------------------------------
class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: str | None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"] | None
    logprobs: None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    """One `data:` event of a streamed chat completion (documented here; sent as JSON text)."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class CompletionLogprobs(BaseModel):
    """Per-token logprobs, in the legacy completions shape: the prompt's tokens first when
    `echo` is set (the very first has no logprob), then the generated ones."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length"] | None
    logprobs: CompletionLogprobs | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    system_fingerprint: str | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "openchat"
    root: str | None = None
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
