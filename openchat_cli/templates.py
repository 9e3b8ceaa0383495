"""Conversation templates: the single source of truth for data, train and serve.

A template turns a conversation (system, condition, messages with per-message weights) into
token ids plus per-token loss weights for training, into a prompt ending in the assistant
prefix for inference, and into a Jinja `chat_template` saved with tokenizers so that vLLM,
transformers and other tools format prompts exactly as we train.

How token ids stay identical to tokenizing the rendered text in one go (the Jinja path):
- each message is tokenized on its own (BPE is not compositional, so pieces are cut where the
  tokenizer's pre-tokenizer always cuts anyway);
- pieces are cut at special tokens, and between a role prefix and its content;
- message content is trimmed, and the separator between a prefix and its content (" ", "\\n",
  "\\n\\n") belongs to the content piece, so a piece never ends in whitespace that could merge
  with what follows;
- text inside content is tokenized with `split_special_tokens`, so a user typing
  "<|end_of_turn|>" gets ordinary text tokens, never the control token.

Weights: `weights[i]` is the loss weight of token `i` as a prediction target (labels are the
input ids themselves; the trainer shifts). Assistant content, its separator and its end-of-turn
token carry the message weight; everything else is 0.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from openchat_cli.errors import OpenchatError

COND = "{condition}"


@dataclass
class Message:
    role: str  # "user" | "assistant"
    content: str
    weight: float = 1.0
    input: str | None = None  # optional extra input of an instruction (Alpaca's "### Input:")


@dataclass
class Conversation:
    messages: list[Message]
    system: str | None = None
    condition: str | None = None
    id: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Conversation:
        """Build from the conversation JSONL contract (or OpenAI-style messages with system or
        developer roles)."""
        systems: list[str] = [data["system"]] if data.get("system") is not None else []
        messages: list[Message] = []
        for m in data.get("messages", []):
            role = message_role(m["role"])
            content = content_text(m.get("content"))
            if role == "system":
                systems.append(content)
                continue
            weight = m.get("weight")
            messages.append(
                Message(
                    role=role, content=content, weight=1.0 if weight is None else float(weight), input=m.get("input")
                )
            )
        return cls(messages=messages, system=join_system(systems), condition=data.get("condition"), id=data.get("id"))


SYSTEM_JOIN = "\n\n"
#: Roles whose messages are system prompts: OpenAI's newer clients send `developer` for `system`.
SYSTEM_ROLES = ("system", "developer")


def message_role(role: str) -> str:
    """A message's role as every template reads it (data, serve and the Jinja template alike):
    `developer` is `system`."""
    return "system" if role in SYSTEM_ROLES else role


def join_system(texts: Sequence[str | None]) -> str | None:
    """The one rule for several system prompts (data, serve and the Jinja template alike): each
    trimmed, empty ones dropped, the rest joined by a blank line, in order. None when no system
    prompt was given at all (the template's default applies), "" when all were empty (none)."""
    given = [t for t in texts if t is not None]
    if not given:
        return None
    return SYSTEM_JOIN.join(t.strip() for t in given if t.strip())


def content_text(content: Any) -> str:
    """OpenAI content may be a string or a list of parts; only text parts carry meaning here."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, Mapping) and p.get("type", "text") == "text")
    raise TypeError(f"message content must be a string or a list of text parts, not {type(content).__name__}")


@dataclass(frozen=True)
class Piece:
    """A run of text (or one special token) with the loss weight of all its tokens."""

    text: str
    weight: float
    special: bool = False


@dataclass
class Encoded:
    input_ids: list[int]
    weights: list[float]
    message_starts: list[int] = field(default_factory=list)  # token offset where message i begins
    prefix_len: int = 0  # tokens before the first message (bos + system)


@dataclass(frozen=True)
class ChatTemplate:
    """A conversation format, described by its strings; pieces and Jinja are derived from them.

    Prefixes may contain "{condition}" (OpenChat's conditioning, e.g. "GPT4 Correct" or
    "Math Correct"); `sep` joins a prefix to the content that follows it.
    """

    name: str
    description: str
    user_prefix: str
    assistant_prefix: str
    user_end: str  # after user content (usually the end-of-turn token)
    assistant_end: str  # after assistant content; the model learns to emit it
    sep: str = " "
    bos: str = ""
    system_prefix: str = ""
    system_end: str = ""
    turn_suffix: str = ""  # text after each end-of-turn (ChatML's "\n")
    default_condition: str = ""
    default_system: str | None = None
    input_prefix: str = "\n\n"  # how a user message's optional `input` is joined to its content
    stop_strings: tuple[str, ...] = ()

    # -- tokens the tokenizer must know --------------------------------------------------------
    @property
    def special_tokens(self) -> list[str]:
        """Control tokens this template uses, in a stable order."""
        found: list[str] = []
        for text in (
            self.bos,
            self.system_prefix,
            self.system_end,
            self.user_prefix,
            self.user_end,
            self.assistant_prefix,
            self.assistant_end,
        ):
            for tok in _find_specials(text):
                if tok not in found:
                    found.append(tok)
        return found

    @property
    def eot_token(self) -> str:
        """The token that ends an assistant turn (generation stops here)."""
        specials = _find_specials(self.assistant_end)
        if not specials:
            raise ValueError(f"template {self.name} has no end-of-turn token")
        return specials[-1]

    # -- pieces --------------------------------------------------------------------------------
    def _condition(self, conv: Conversation) -> str:
        return (conv.condition or self.default_condition).strip()

    def _fill(self, text: str, condition: str) -> str:
        return text.replace(COND, condition)

    def _user_content(self, message: Message) -> str:
        text = message.content.strip()
        if message.input and message.input.strip():
            text = f"{text}{self.input_prefix}{message.input.strip()}"
        return text

    def _system(self, conv: Conversation) -> str | None:
        system = conv.system if conv.system is not None else self.default_system
        if system is None or not system.strip():
            return None
        return system.strip()

    def prefix_pieces(self, conv: Conversation) -> list[Piece]:
        """BOS and the system prompt: the part every split of a conversation repeats."""
        pieces: list[Piece] = []
        if self.bos:
            pieces += _split(self.bos, 0.0)
        system = self._system(conv)
        if system is not None:
            sep = self.sep if self.system_prefix else ""
            pieces += _split(self.system_prefix, 0.0) + [Piece(sep + system, 0.0)]
            pieces += _split(self.system_end + self.turn_suffix, 0.0)
        return _merge(pieces)

    def message_pieces(self, message: Message, condition: str) -> list[Piece]:
        """One message: template strings cut at control tokens, content kept as plain text."""
        if message.role == "user":
            pieces = (
                _split(self._fill(self.user_prefix, condition), 0.0)
                + [Piece(self.sep + self._user_content(message), 0.0)]
                + _split(self.user_end + self.turn_suffix, 0.0)
            )
        elif message.role == "assistant":
            w = float(message.weight)
            pieces = (
                _split(self._fill(self.assistant_prefix, condition), 0.0)
                + [Piece(self.sep + message.content.strip(), w)]
                + _split(self.assistant_end, w)
                + _split(self.turn_suffix, 0.0)
            )
        else:
            raise OpenchatError(f"unknown role '{message.role}' (expected user or assistant)")
        return _merge(pieces)

    def generation_pieces(self, condition: str) -> list[Piece]:
        return _split(self._fill(self.assistant_prefix, condition), 0.0)

    # -- text -----------------------------------------------------------------------------------
    def render(self, conv: Conversation, add_generation_prompt: bool = False) -> str:
        """The conversation as text (what the Jinja template renders)."""
        condition = self._condition(conv)
        pieces = self.prefix_pieces(conv)
        for m in conv.messages:
            pieces += self.message_pieces(m, condition)
        if add_generation_prompt:
            pieces += self.generation_pieces(condition)
        return "".join(p.text for p in pieces)

    def clean_reply(self, text: str) -> str:
        """A generated reply without the separator that starts every assistant turn."""
        return text[len(self.sep) :] if self.sep and text.startswith(self.sep) else text

    # -- tokens ---------------------------------------------------------------------------------
    def encode(self, tokenizer: Any, conv: Conversation) -> Encoded:
        """Token ids and per-token weights for training on a whole conversation."""
        return self.encode_many(tokenizer, [conv])[0]

    def encode_prompt(self, tokenizer: Any, conv: Conversation) -> list[int]:
        """Token ids of a prompt ending in the assistant prefix (inference)."""
        return self.encode_many(tokenizer, [conv], add_generation_prompt=True)[0].input_ids

    def encode_many(
        self, tokenizer: Any, convs: Sequence[Conversation], add_generation_prompt: bool = False
    ) -> list[Encoded]:
        """Encode many conversations with one batched tokenizer call (fast path for `data tokenize`)."""
        check_tokenizer(self, tokenizer)
        special_ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in self.special_tokens}
        layouts: list[tuple[list[Piece], list[int], int]] = []
        texts: list[str] = []
        for conv in convs:
            condition = self._condition(conv)
            pieces = self.prefix_pieces(conv)
            prefix_count = len(pieces)
            starts: list[int] = []
            for m in conv.messages:
                starts.append(len(pieces))
                pieces += self.message_pieces(m, condition)
            if add_generation_prompt:
                pieces += self.generation_pieces(condition)
            layouts.append((pieces, starts, prefix_count))
            texts += [p.text for p in pieces if not p.special]
        token_lists = tokenize_texts(tokenizer, texts)
        out: list[Encoded] = []
        cursor = 0
        for pieces, starts, prefix_count in layouts:
            ids: list[int] = []
            weights: list[float] = []
            piece_offsets: list[int] = []
            for piece in pieces:
                piece_offsets.append(len(ids))
                if piece.special:
                    toks = [special_ids[piece.text]]
                else:
                    toks = token_lists[cursor]
                    cursor += 1
                ids += toks
                weights += [piece.weight] * len(toks)
            piece_offsets.append(len(ids))
            out.append(Encoded(ids, weights, [piece_offsets[s] for s in starts], piece_offsets[prefix_count]))
        return out

    # -- Jinja ----------------------------------------------------------------------------------
    def jinja(self) -> str:
        """A Jinja chat_template that renders exactly `render()` (tested token for token)."""

        def lit(text: str) -> str:
            # A Jinja expression for `text`, with {condition} spliced in as the variable.
            parts = text.split(COND)
            return " ~ condition ~ ".join(json.dumps(p) for p in parts)

        sep = json.dumps(self.sep)
        sys_sep = sep if self.system_prefix else '""'
        default_system = json.dumps(self.default_system) if self.default_system is not None else "none"
        system_roles = json.dumps(list(SYSTEM_ROLES))
        return "".join(
            [
                "{%- set condition = (condition if condition is defined and condition else "
                f"{json.dumps(self.default_condition)}) | trim -%}}",
                # Several system (or developer) messages: `join_system`'s rule (trimmed, empty ones dropped, joined
                # by a blank line); none at all: the template's default system prompt.
                f"{{%- set sys = namespace(text={default_system}, parts=[]) -%}}",
                f"{{%- for message in messages if message['role'] in {system_roles} -%}}"
                "{%- if message['content'] is string -%}{%- set text = message['content'] | trim -%}"
                "{%- else -%}{%- set text = namespace(s='') -%}"
                "{%- for part in message['content'] if part['type'] | default('text') == 'text' -%}"
                "{%- set text.s = text.s ~ part['text'] -%}{%- endfor -%}"
                "{%- set text = text.s | trim -%}{%- endif -%}"
                "{%- if text -%}{%- set sys.parts = sys.parts + [text] -%}{%- endif -%}"
                "{%- if loop.last -%}{%- set sys.text = sys.parts | join(" + json.dumps(SYSTEM_JOIN) + ") -%}"
                "{%- endif -%}{%- endfor -%}",
                f"{{{{- {json.dumps(self.bos)} -}}}}",
                "{%- if sys.text is not none and sys.text | trim -%}",
                f"{{{{- {lit(self.system_prefix)} ~ {sys_sep} ~ (sys.text | trim) ~ {lit(self.system_end + self.turn_suffix)} -}}}}",
                "{%- endif -%}",
                "{%- for message in messages -%}",
                "{%- if message['role'] == 'user' -%}",
                f"{{{{- {lit(self.user_prefix)} ~ {sep} ~ (message['content'] | trim) -}}}}",
                "{%- if message['input'] is defined and message['input'] and message['input'] | trim -%}",
                f"{{{{- {json.dumps(self.input_prefix)} ~ (message['input'] | trim) -}}}}",
                "{%- endif -%}",
                f"{{{{- {lit(self.user_end + self.turn_suffix)} -}}}}",
                "{%- elif message['role'] == 'assistant' -%}",
                f"{{{{- {lit(self.assistant_prefix)} ~ {sep} ~ (message['content'] | trim) ~ "
                f"{lit(self.assistant_end + self.turn_suffix)} -}}}}",
                f"{{%- elif message['role'] not in {system_roles} -%}}",
                "{{- raise_exception('unknown role: ' ~ message['role']) -}}",
                "{%- endif -%}",
                "{%- endfor -%}",
                "{%- if add_generation_prompt -%}",
                f"{{{{- {lit(self.assistant_prefix)} -}}}}",
                "{%- endif -%}",
            ]
        )


SPECIAL_RE = re.compile(r"(<\|[^|<>\s]+\|>|</?s>)")


def _find_specials(text: str) -> list[str]:
    """Control tokens written in a template string: <s>, </s>, <|...|>."""
    return SPECIAL_RE.findall(text)


def _split(template_text: str, weight: float) -> list[Piece]:
    """Cut a template string (never user content) at the control tokens it contains."""
    return [
        Piece(part, weight, special=bool(SPECIAL_RE.fullmatch(part)))
        for part in SPECIAL_RE.split(template_text)
        if part
    ]


def _merge(pieces: list[Piece]) -> list[Piece]:
    """Join neighbouring text pieces of equal weight (tokenized together, as Jinja's text is)."""
    out: list[Piece] = []
    for piece in pieces:
        if not piece.text:
            continue
        if out and not piece.special and not out[-1].special and out[-1].weight == piece.weight:
            out[-1] = Piece(out[-1].text + piece.text, piece.weight)
        else:
            out.append(piece)
    return out


def tokenize_texts(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Batch-tokenize plain text pieces; special-token strings inside them stay plain text."""
    if not texts:
        return []
    return tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def check_tokenizer(template: ChatTemplate, tokenizer: Any) -> None:
    """Refuse a tokenizer that lacks the template's control tokens (they would become text)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # O(1) lookups; get_vocab() copies the whole vocabulary
        missing = [t for t in template.special_tokens if backend.token_to_id(t) is None]
    else:
        vocab = tokenizer.get_vocab()
        missing = [t for t in template.special_tokens if t not in vocab]
    if missing:
        raise OpenchatError(
            f"tokenizer lacks the control token(s) {', '.join(missing)} needed by template "
            f"'{template.name}': add them with `openchat model add-tokens MODEL OUT "
            + " ".join(f"--token '{t}'" for t in missing)
            + "`"
        )


EOT = "<|end_of_turn|>"


def end_of_turn_template(name: str, description: str, user: str, assistant: str, condition: str = "") -> ChatTemplate:
    """OpenChat's own family: `<s>{user} …<|end_of_turn|>{assistant} …<|end_of_turn|>`, the system
    prompt ending in the same token; `condition` fills the role prefixes' condition slot."""
    return ChatTemplate(
        name=name,
        description=description,
        bos="<s>",
        user_prefix=user,
        assistant_prefix=assistant,
        user_end=EOT,
        assistant_end=EOT,
        system_end=EOT,
        default_condition=condition,
    )


TEMPLATES: dict[str, ChatTemplate] = {
    t.name: t
    for t in [
        end_of_turn_template(
            "openchat_v1", "OpenChat v1: <s>Human: …<|end_of_turn|>Assistant: …<|end_of_turn|>", "Human:", "Assistant:"
        ),
        end_of_turn_template(
            "opencoder", "OpenCoder: <s>User: …<|end_of_turn|>Assistant: …<|end_of_turn|>", "User:", "Assistant:"
        ),
        end_of_turn_template(
            "openchat_v3.2",
            "OpenChat v3.2, conditioned: GPT4 User: …<|end_of_turn|>GPT4 Assistant: …",
            COND + " User:",
            COND + " Assistant:",
            condition="GPT4",
        ),
        end_of_turn_template(
            "openchat_3.5",
            "OpenChat 3.5, conditioned: GPT4 Correct User: …<|end_of_turn|>GPT4 Correct Assistant: …",
            COND + " User:",
            COND + " Assistant:",
            condition="GPT4 Correct",
        ),
        ChatTemplate(
            name="openchat_3.6",
            description="OpenChat 3.6, Llama-3 headers: <|start_header_id|>GPT4 Correct User<|end_header_id|>…<|eot_id|>",
            bos="<|begin_of_text|>",
            system_prefix="<|start_header_id|>system<|end_header_id|>",
            system_end="<|eot_id|>",
            user_prefix="<|start_header_id|>" + COND + " User<|end_header_id|>",
            assistant_prefix="<|start_header_id|>" + COND + " Assistant<|end_header_id|>",
            user_end="<|eot_id|>",
            assistant_end="<|eot_id|>",
            sep="\n\n",
            default_condition="GPT4 Correct",
        ),
        ChatTemplate(
            name="alpaca",
            description="Alpaca / OpenAlpaca: ### Instruction: / ### Input: / ### Response:",
            bos="<s>",
            user_prefix="\n\n### Instruction:",
            assistant_prefix="\n\n### Response:",
            user_end="",
            assistant_end="</s>",
            sep="\n",
            input_prefix="\n\n### Input:\n",
            default_system=(
                "Below is an instruction that describes a task. "
                "Write a response that appropriately completes the request."
            ),
        ),
        ChatTemplate(
            name="chatml",
            description="ChatML: <|im_start|>user\\n…<|im_end|>",
            system_prefix="<|im_start|>system",
            system_end="<|im_end|>",
            user_prefix="<|im_start|>user",
            assistant_prefix="<|im_start|>assistant",
            user_end="<|im_end|>",
            assistant_end="<|im_end|>",
            sep="\n",
            turn_suffix="\n",
        ),
    ]
}
DEFAULT_TEMPLATE = "openchat_3.5"


def get_template(name: str) -> ChatTemplate:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise OpenchatError(f"unknown template '{name}': choose one of {', '.join(TEMPLATES)}") from None


def all_special_tokens() -> list[str]:
    """Every control token any template uses (a tiny model knows them all)."""
    found: list[str] = []
    for t in TEMPLATES.values():
        for tok in t.special_tokens:
            if tok not in found:
                found.append(tok)
    return found
