"""Request and response shapes of the OpenAI API subset we serve (pydantic v2).

Requests are validated strictly ("0.7" is not a temperature) and unknown top-level fields are
refused, as OpenAI does. What real clients send is accepted:
- `null` for any optional field means its default (`"n": null` is n = 1);
- fields OpenAI defines that carry no generation meaning (`user`, `store`, `metadata`,
  `safety_identifier`, `prompt_cache_key`, `verbosity`, `service_tier`, ...) are accepted and
  ignored; so are keys clients add to messages (`id`, `opts`), with a debug log;
- fields a local model cannot honour (tool calls, audio output, web search) are accepted with
  their neutral values (`tools` with `tool_choice: "none"`) and otherwise refused as "not
  supported", naming the field;
- `response_format` `json_object` / `json_schema` is enforced by constrained decoding
  (engines/guided.py).
Chat completions return `logprobs` / `top_logprobs` in OpenAI's shape; text completions support
`logprobs` and `echo` as the legacy completions API and vLLM define them (what log-likelihood
evals such as lm-evaluation-harness's `local-completions` send). vLLM's `min_p` and
`repetition_penalty` and OpenAI's `logit_bias` are validated here.
Errors raised here become `{"error": {"message", "type", "param", "code"}}` (errors.py).
"""

from __future__ import annotations

import logging
import re
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
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from openchat_cli.templates import message_role

log = logging.getLogger("openchat.serve")

MAX_STOP = 16
MAX_LOGPROBS = 20  # top alternatives per token (vLLM's default max_logprobs)
MAX_SEED = 2**63 - 1
MAX_DEPTH = 32  # arrays/objects in a request nest far less; deeper ones would only cost recursion
MAX_LOGIT_BIAS = 300  # OpenAI's own limit on logit_bias entries
TOKEN_ID_KEY = re.compile(r"^(0|[1-9][0-9]{0,9})$")


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
            stack.extend((depth, child) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def whole_number(value: Any) -> Any:
    """JSON has one number type: 2.0 is the integer 2 (JSON Schema agrees), 2.5 is not."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


JsonInt = Annotated[StrictInt, BeforeValidator(whole_number)]
# Bounds inside the Annotated: on a union pydantic would write them into the schema as "ge".
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
                "lone_surrogate",
                "the text holds a lone UTF-16 surrogate ({char}), which is not valid Unicode",
                {"field": found[0], "char": found[1]},
            )
        return _nulls_are_defaults(cls, data)


def _nulls_are_defaults(model: type[BaseModel], data: Any) -> Any:
    """OpenAI marks optional fields nullable: `"n": null` means the default n, not a type error.
    Required fields keep their null (and get a clear error)."""
    if not isinstance(data, dict) or not any(v is None for v in data.values()):
        return data
    fields = model.model_fields
    return {
        k: v
        for k, v in data.items()
        if not (v is None and k in fields and not fields[k].is_required() and k not in NULL_IS_A_VALUE)
    }


#: Fields where null means something other than the default (completions' max_tokens: null is
#: "up to the context", as in vLLM, while leaving it out is 16).
NULL_IS_A_VALUE = frozenset({"max_tokens"})


# -- pieces -----------------------------------------------------------------------------------
class TextPart(_Request):
    type: Literal["text"] = "text"
    text: StrictStr


class ChatMessage(_Request):
    # Clients add their own keys to messages (Open WebUI's `id`, LibreChat's `opts`): ignored.
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"] = Field(
        description="'developer' is treated as 'system'; tool and function roles are not supported."
    )
    content: str | list[TextPart] | None = Field(default=None, description="A string or a list of text content parts.")
    name: StrictStr | None = None
    refusal: StrictStr | None = None
    tool_calls: list[Any] | None = Field(
        default=None, json_schema_extra={"maxItems": 0}, description="Only empty: tool calling is not supported."
    )

    @model_validator(mode="before")
    @classmethod
    def _extra_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            extra = [k for k in data if k not in cls.model_fields]
            if extra:
                log.debug("ignoring message keys the API does not define: %s", ", ".join(map(str, extra)))
        return data

    @field_validator("role", mode="before")
    @classmethod
    def _role(cls, value: Any) -> Any:
        if value in ("tool", "function"):
            raise PydanticCustomError(
                "unsupported", "role '{role}' is not supported (no tool calling)", {"role": value}
            )
        if not isinstance(value, str) or value not in ("system", "developer", "user", "assistant"):
            raise PydanticCustomError(
                "literal_error",
                "role must be one of 'system', 'developer', 'user', 'assistant', got '{value}'"
                if isinstance(value, str)
                else "role must be a string",
                {"value": value},
            )
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
                    "unsupported",
                    "content[{i}] has type '{kind}': only 'text' parts are supported",
                    {"i": i, "kind": kind},
                )
            if not isinstance(part.get("text"), str):
                raise PydanticCustomError("content_type", "content[{i}].text must be a string", {"i": i})
        return value

    @field_validator("tool_calls")
    @classmethod
    def _no_tools(cls, value: Any) -> Any:
        if value:
            raise PydanticCustomError("unsupported", "tool calls are not supported")
        return value

    def to_template_dict(self) -> dict[str, Any]:
        """The message as the shared conversation template reads it."""
        role = message_role(self.role)
        content = self.content
        if isinstance(content, list):
            content = [p.model_dump() for p in content]
        return {"role": role, "content": content}


class StreamOptions(_Request):
    include_usage: StrictBool | None = False
    continuous_usage_stats: StrictBool | None = False
    include_obfuscation: StrictBool | None = Field(
        default=None, description="Accepted and ignored: no padding is added to chunks on a local server."
    )


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
    temperature: StrictFloat | None = Field(default=None, ge=0.0, le=2.0, description="0 means greedy. Default 1.")
    top_p: StrictFloat | None = Field(default=None, ge=0.0, le=1.0)
    top_k: TopK | None = Field(
        default=None, description="vLLM extension: sample from the k most likely tokens (0 or -1 = off)."
    )
    n: Count | None = Field(default=1, description="Number of choices.")
    stop: str | list[str] | None = Field(
        default=None,
        description="Up to 16 stop strings.",
        json_schema_extra={"minLength": 1, "maxItems": MAX_STOP, "items": {"type": "string", "minLength": 1}},
    )
    seed: Seed | None = None
    presence_penalty: StrictFloat | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: StrictFloat | None = Field(default=None, ge=-2.0, le=2.0)
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    ignore_eos: StrictBool | None = Field(
        default=False, description="vLLM extension: keep generating past end-of-turn (benchmarks)."
    )
    min_p: StrictFloat | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="vLLM extension: drop tokens less likely than min_p times the most likely one (0 = off).",
    )
    repetition_penalty: StrictFloat | None = Field(
        default=None,
        gt=0.0,
        le=10.0,
        description="vLLM extension: divide (multiply, when negative) the logits of tokens already "
        "in the prompt or reply by this (1 = off).",
    )
    logit_bias: (
        dict[Annotated[str, Field(pattern=TOKEN_ID_KEY.pattern)], Annotated[StrictFloat, Field(ge=-100.0, le=100.0)]]
        | None
    ) = Field(
        default=None,
        description="Token id (as a string) -> bias in [-100, 100] added to its logit.",
        json_schema_extra={"maxProperties": MAX_LOGIT_BIAS},
    )
    # Defined by OpenAI, no generation meaning here: accepted and ignored.
    user: StrictStr | None = None
    metadata: dict[str, str] | None = None
    store: StrictBool | None = None
    service_tier: StrictStr | None = None
    safety_identifier: StrictStr | None = None
    prompt_cache_key: StrictStr | None = None
    prompt_cache_retention: StrictStr | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _stop(cls, value: Any) -> Any:
        return _stop_list(value)

    @field_validator("logit_bias", mode="before")
    @classmethod
    def _logit_bias(cls, value: Any) -> Any:
        if isinstance(value, dict):
            if len(value) > MAX_LOGIT_BIAS:
                raise PydanticCustomError(
                    "logit_bias_count", "at most {n} logit_bias entries are allowed", {"n": MAX_LOGIT_BIAS}
                )
            for key in value:
                if not isinstance(key, str) or not TOKEN_ID_KEY.match(key):
                    raise PydanticCustomError(
                        "logit_bias_key",
                        "logit_bias keys are token ids written as strings, like \"50256\": got '{key}'",
                        {"key": key},
                    )
        return value

    def logit_bias_pairs(self) -> tuple[tuple[int, float], ...]:
        """`logit_bias` as (token id, bias) pairs, sorted by token id (SamplingParams' form;
        range-checked against the vocabulary by the serving layer, which knows it)."""
        return tuple(sorted((int(k), float(v)) for k, v in (self.logit_bias or {}).items()))

    def stop_strings(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


# Rules between fields, so the schema accepts only what the server does.
STREAM_OPTIONS_NEED_STREAM = {
    "if": {"properties": {"stream_options": {"type": "object"}}, "required": ["stream_options"]},
    "then": {"properties": {"stream": {"const": True}}, "required": ["stream"]},
}
TOP_LOGPROBS_NEED_LOGPROBS = {
    "if": {"properties": {"top_logprobs": {"type": "integer", "minimum": 1}}, "required": ["top_logprobs"]},
    "then": {"properties": {"logprobs": {"const": True}}, "required": ["logprobs"]},
}
TOOLS_NEED_CHOICE_NONE = [
    {
        "if": {"properties": {key: {"type": "array", "minItems": 1}}, "required": [key]},
        "then": {"properties": {choice: {"const": "none"}}, "required": [choice]},
    }
    for key, choice in (("tools", "tool_choice"), ("functions", "function_call"))
]
ZERO_TOKENS_NEED_ECHO = {
    "if": {"properties": {"max_tokens": {"const": 0}}, "required": ["max_tokens"]},
    "then": {"properties": {"echo": {"const": True}}, "required": ["echo"]},
}


class JsonSchemaFormat(_Request):
    name: StrictStr | None = None
    description: StrictStr | None = None
    schema_: dict[str, Any] | None = Field(
        default=None, alias="schema", description="The JSON Schema the reply must match."
    )
    strict: StrictBool | None = None

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ResponseFormat(_Request):
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: JsonSchemaFormat | None = None


class ChatCompletionRequest(_Sampling):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"allOf": [STREAM_OPTIONS_NEED_STREAM, TOP_LOGPROBS_NEED_LOGPROBS, *TOOLS_NEED_CHOICE_NONE]},
    )

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: Count | None = None
    max_completion_tokens: Count | None = None
    condition: StrictStr | None = Field(
        default=None, description="OpenChat condition, e.g. 'GPT4 Correct' or 'Math Correct' (default: the template's)."
    )
    logprobs: StrictBool | None = Field(default=None, description="Return each generated token's log-probability.")
    top_logprobs: LogprobCount | None = Field(
        default=None, description=f"With logprobs: the 0-{MAX_LOGPROBS} most likely tokens at each position too."
    )
    tools: list[dict[str, Any]] | None = Field(
        default=None, description="Accepted with tool_choice 'none' only: no tool can be called."
    )
    tool_choice: Any = Field(default=None, json_schema_extra={"enum": [None, "none", "auto"]})
    parallel_tool_calls: StrictBool | None = None
    functions: list[dict[str, Any]] | None = Field(
        default=None, description="Accepted with function_call 'none' only (deprecated tools)."
    )
    function_call: Any = Field(default=None, json_schema_extra={"enum": [None, "none", "auto"]})
    audio: Any = Field(
        default=None, json_schema_extra={"type": "null"}, description="Only null: audio output is not supported."
    )
    prediction: dict[str, Any] | None = Field(
        default=None, description="Accepted and ignored (predicted outputs only save latency)."
    )
    web_search_options: Any = Field(
        default=None, json_schema_extra={"type": "null"}, description="Only null: web search is not supported."
    )
    verbosity: Literal["low", "medium", "high"] | None = None
    response_format: ResponseFormat | None = Field(
        default=None, description="text, json_object, or json_schema (constrained decoding)."
    )
    modalities: list[str] | None = Field(default=None, json_schema_extra={"items": {"const": "text"}})
    reasoning_effort: StrictStr | None = None

    @field_validator("messages", mode="before")
    @classmethod
    def _messages(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise PydanticCustomError("messages_empty", "messages must contain at least one message")
        return value

    @field_validator("tool_choice", "function_call")
    @classmethod
    def _tool_choice(cls, value: Any) -> Any:
        if value not in (None, "none", "auto"):
            raise PydanticCustomError(
                "unsupported", "tool calling is not supported: only 'none' (or 'auto' without tools) is accepted"
            )
        return value

    @field_validator("audio", "web_search_options")
    @classmethod
    def _only_null(cls, value: Any, info: Any) -> Any:
        if value is not None:
            what = {"audio": "audio output", "web_search_options": "web search"}[info.field_name]
            raise PydanticCustomError(
                "unsupported", "{what} is not supported (send null or leave it out)", {"what": what}
            )
        return value

    @model_validator(mode="after")
    def _rules_between_fields(self) -> ChatCompletionRequest:
        for key, choice in (("tools", "tool_choice"), ("functions", "function_call")):
            if getattr(self, key) and getattr(self, choice) != "none":
                raise PydanticCustomError(
                    "unsupported",
                    "tool calling is not supported: '{key}' is accepted only with '{choice}': 'none'",
                    {"field": choice, "key": key, "choice": choice},
                )
        if self.top_logprobs and not self.logprobs:
            raise PydanticCustomError("invalid_value", "top_logprobs needs 'logprobs': true", {"field": "top_logprobs"})
        return self

    @field_validator("response_format", mode="before")
    @classmethod
    def _response_format(cls, value: Any) -> Any:
        if isinstance(value, dict) and value.get("type", "text") not in ("text", "json_object", "json_schema"):
            raise PydanticCustomError("unsupported", "response_format type must be text, json_object or json_schema")
        return value

    def response_format_dict(self) -> dict[str, Any] | None:
        """response_format as OpenAI's JSON (what engines.guided.json_guide reads)."""
        if self.response_format is None:
            return None
        return self.response_format.model_dump(by_alias=True, exclude_none=True)

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
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"allOf": [STREAM_OPTIONS_NEED_STREAM, ZERO_TOKENS_NEED_ECHO]}
    )

    prompt: (
        str
        | Annotated[list[str], Field(min_length=1)]
        | Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]
        | Annotated[list[Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]], Field(min_length=1)]
    ) = Field(description="Text, a list of texts, token ids, or a list of token-id lists.")
    max_tokens: TokenBudget | None = Field(
        default=16, description="0 only with echo: score the prompt, generate nothing."
    )
    echo: StrictBool | None = Field(
        default=False,
        description="Return the prompt before the completion (with its token logprobs when logprobs is set).",
    )
    best_of: Literal[1] | None = Field(
        default=None, description="Only 1: each choice is sampled once (no server-side reranking)."
    )
    logprobs: LogprobCount | None = Field(
        default=None, description=f"Return each token's logprob and its 0-{MAX_LOGPROBS} most likely alternatives."
    )
    add_special_tokens: StrictBool | None = Field(
        default=True, description="vLLM extension: let the tokenizer add its special tokens (BOS) to text prompts."
    )
    suffix: StrictStr | None = Field(default=None, json_schema_extra={"maxLength": 0})

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt(cls, value: Any) -> Any:
        def is_ids(v: Any) -> bool:
            return (
                isinstance(v, list)
                and bool(v)
                and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in v)
            )

        if isinstance(value, str):
            return value
        if isinstance(value, list) and value:
            value = [[whole_number(t) for t in v] if isinstance(v, list) else whole_number(v) for v in value]
            if all(isinstance(v, str) for v in value) or is_ids(value) or all(is_ids(v) for v in value):
                return value
        raise PydanticCustomError(
            "prompt_type",
            "prompt must be a string, a non-empty list of strings, a list of token ids, or a list of token-id lists",
        )

    @field_validator("best_of", mode="before")
    @classmethod
    def _best_of(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool) and value != 1:
            raise PydanticCustomError("unsupported", "only best_of 1 is supported (each choice is sampled once)")
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


class ChatTopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None  # the token text's UTF-8 bytes


class ChatTokenLogprob(ChatTopLogprob):
    """One generated token: its logprob and the `top_logprobs` most likely tokens there."""

    top_logprobs: list[ChatTopLogprob] = Field(default_factory=list)


class ChatChoiceLogprobs(BaseModel):
    content: list[ChatTokenLogprob] | None = None
    refusal: list[ChatTokenLogprob] | None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"] | None
    logprobs: ChatChoiceLogprobs | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None


class ChatDelta(BaseModel):
    """What a chunk adds to the message; fields it does not add are left out (OpenAI's shape:
    `{"role": "assistant", "content": ""}` first, `{"content": "..."}`, `{}` at the end)."""

    role: Literal["assistant"] | None = None
    content: str | None = None

    @model_serializer(mode="wrap")
    def _without_nulls(self, handler: Any) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: ChatChoiceLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionChunk(BaseModel):
    """One `data:` event of a streamed chat completion."""

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


class CompletionChunk(BaseModel):
    """One `data:` event of a streamed text completion."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


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
    parent: str | None = None  # a LoRA adapter's base model (as vLLM lists them)
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
