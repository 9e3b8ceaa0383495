"""Record shapes: ShareGPT, Alpaca, Dolly and OpenAI messages (and our own conversation JSONL),
each turned into a `Conv` with roles user / assistant / system. Preference shapes are read in
`openchat_cli.data.preference`."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from openchat_cli.data.records import Conv, Drop, Location, Malformed
from openchat_cli.templates import content_text

# Preference shapes (read into pairs by openchat_cli.data.preference).
PAIR_FORMATS = ("trl", "hh", "rm-static", "webgpt", "shp", "gpt4llm")
FORMATS = ("auto", "sharegpt", "html", "alpaca", "dolly", "openai", *PAIR_FORMATS)

ROLES = {
    "human": "user",
    "user": "user",
    "prompter": "user",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "bot": "assistant",
    "claude": "assistant",
    "system": "system",
    "developer": "system",
}


def detect(record: dict[str, Any]) -> str | None:
    """The shape of one record, or None if it is none of the known ones."""
    if "conversations" in record or "items" in record:
        return "sharegpt"
    if "messages" in record:
        return "openai"
    if "instruction" in record:
        if "response" in record or "context" in record or "category" in record:
            return "dolly"
        return "alpaca"
    return None


def check_weight(value: Any, field: str) -> float:
    """A loss weight as a float: a finite number ≥ 0 (JSON parsers accept NaN and Infinity, and a
    negative weight would train the model away from the reply), else Malformed naming the field."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Malformed(f"expected a number, found {type(value).__name__}", field)
    try:
        weight = float(value)
    except OverflowError:
        weight = math.inf
    if not math.isfinite(weight):
        raise Malformed(f"weight must be a finite number, found {value!r}", field)
    if weight < 0:
        raise Malformed(f"weight must be 0 or more, found {value!r}", field)
    return weight


def _str_field(record: dict[str, Any], key: str, required: bool = True) -> str | None:
    value = record.get(key)
    if value is None:
        if required:
            raise Malformed("missing", key)
        return None
    if not isinstance(value, str):
        raise Malformed(f"expected a string, found {type(value).__name__}", key)
    return value


def _role(raw: Any, field: str) -> str:
    if not isinstance(raw, str):
        raise Malformed(f"expected a role name, found {type(raw).__name__}", field)
    role = ROLES.get(raw.strip().lower())
    if role is None:
        raise Drop("unknown_role", f"{field} = {raw!r}")
    return role


def _ident(record: dict[str, Any], loc: Location) -> str:
    value = record.get("id", record.get("conversation_id"))
    if isinstance(value, (str, int)) and str(value) != "":
        return str(value)
    return f"{Path(loc.file).stem}:{loc.record}"


def _model(record: dict[str, Any]) -> str | None:
    value = record.get("model")
    return str(value) if isinstance(value, (str, int, float)) and str(value) else None


def from_sharegpt(record: dict[str, Any], loc: Location, source: str) -> Conv:
    key = "conversations" if "conversations" in record else "items"
    turns = record.get(key)
    if not isinstance(turns, list):
        raise Malformed("expected a list of {from, value} messages", key)
    messages = []
    for i, turn in enumerate(turns):
        where = f"{key}[{i}]"
        if not isinstance(turn, dict):
            raise Malformed(f"expected an object, found {type(turn).__name__}", where)
        if "from" not in turn:
            raise Malformed("missing", f"{where}.from")
        value = turn.get("value", turn.get("text"))
        if not isinstance(value, str):
            raise Malformed(
                "missing" if value is None else f"expected a string, found {type(value).__name__}", f"{where}.value"
            )
        messages.append({"role": _role(turn["from"], f"{where}.from"), "content": value})
    return Conv(
        id=_ident(record, loc),
        source=source,
        messages=messages,
        model=_model(record),
        system=_str_field(record, "system", required=False),
    )


def _instruction(
    record: dict[str, Any], loc: Location, source: str, *, extra_field: str, answer_field: str, system: str | None
) -> Conv:
    """Instruction datasets: an instruction, optional extra input, one answer."""
    instruction = _str_field(record, "instruction")
    extra = _str_field(record, extra_field, required=False)
    answer = _str_field(record, answer_field)
    user: dict[str, Any] = {"role": "user", "content": instruction}
    if extra and extra.strip():
        user["input"] = extra
    return Conv(
        id=_ident(record, loc),
        source=source,
        model=_model(record),
        system=system,
        messages=[user, {"role": "assistant", "content": answer}],
    )


def from_alpaca(record: dict[str, Any], loc: Location, source: str) -> Conv:
    return _instruction(
        record,
        loc,
        source,
        extra_field="input",
        answer_field="output",
        system=_str_field(record, "system", required=False),
    )


def from_dolly(record: dict[str, Any], loc: Location, source: str) -> Conv:
    return _instruction(record, loc, source, extra_field="context", answer_field="response", system=None)


def from_openai(record: dict[str, Any], loc: Location, source: str) -> Conv:
    """OpenAI chat messages; also reads our own conversation JSONL (weights, input, condition)."""
    raw = record.get("messages")
    if not isinstance(raw, list):
        raise Malformed("expected a list of {role, content} messages", "messages")
    messages = []
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise Malformed(f"expected an object, found {type(m).__name__}", where)
        if "role" not in m:
            raise Malformed("missing", f"{where}.role")
        role = _role(m["role"], f"{where}.role")
        try:
            content = content_text(m.get("content"))
        except TypeError as exc:
            raise Malformed(str(exc), f"{where}.content") from None
        msg: dict[str, Any] = {"role": role, "content": content}
        if m.get("weight") is not None:
            msg["weight"] = check_weight(m["weight"], f"{where}.weight")
        if isinstance(m.get("input"), str) and m["input"].strip():
            msg["input"] = m["input"]
        messages.append(msg)
    src = record.get("source") if isinstance(record.get("source"), str) and record.get("source") else source
    condition = record.get("condition") if isinstance(record.get("condition"), str) else None
    return Conv(
        id=_ident(record, loc),
        source=src,
        messages=messages,
        model=_model(record),
        system=_str_field(record, "system", required=False),
        condition=condition or None,
    )


NORMALIZERS: dict[str, Callable[[dict[str, Any], Location, str], Conv]] = {
    "sharegpt": from_sharegpt,
    "html": from_sharegpt,
    "alpaca": from_alpaca,
    "dolly": from_dolly,
    "openai": from_openai,
}


def normalize(record: Any, loc: Location, source: str, forced: str = "auto") -> tuple[Conv, str]:
    """A `Conv` and the shape it was read as; Malformed / Drop if it cannot be used."""
    if not isinstance(record, dict):
        raise Malformed(f"expected an object, found {type(record).__name__}")
    shape = detect(record) if forced == "auto" else forced
    if shape is None:
        keys = ", ".join(sorted(map(str, record))[:6]) or "none"
        raise Malformed(f"not a ShareGPT, Alpaca, Dolly or OpenAI record (keys: {keys})")
    if shape == "html" and "messages" in record and "conversations" not in record:
        shape = "openai"
    return NORMALIZERS[shape](record, loc, source), shape
