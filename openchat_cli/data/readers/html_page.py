"""Saved ShareGPT share pages (.html): the conversation comes from the page's embedded JSON
(Next.js `__NEXT_DATA__` or any `<script type="application/json">`), not from scraping the DOM."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from openchat_cli.data.readers.textcheck import bad_text, too_deep
from openchat_cli.data.records import Location, RawItem

SCRIPT = re.compile(r"<script\b([^>]*)>(.*?)</script\s*>", re.S | re.I)
ASSIGN = re.compile(r"^\s*(?:window\.)?[\w$.]+\s*=\s*")
CONV_KEYS = ("items", "conversations", "conversation", "messages", "mapping")


def _is_message_list(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(m, dict) for m in value)
        and all(("from" in m and "value" in m) or ("role" in m and "content" in m) for m in value)
    )


def find_conversation(data: Any) -> dict[str, Any] | None:
    """The first object holding a list of {from, value} (or {role, content}) messages, with
    the nearest id / model / title found on the way down."""
    stack: list[tuple[Any, dict[str, Any]]] = [(data, {})]
    while stack:
        node, inherited = stack.pop(0)
        if isinstance(node, dict):
            ctx = dict(inherited)
            for key in ("id", "model", "title"):
                if isinstance(node.get(key), (str, int)) and node.get(key) != "":
                    ctx[key] = node[key]
            for key in CONV_KEYS:
                if _is_message_list(node.get(key)):
                    out = {k: v for k, v in ctx.items()}
                    field = "messages" if "role" in node[key][0] else "conversations"
                    out[field] = node[key]
                    return out
            stack.extend((v, ctx) for v in node.values() if isinstance(v, (dict, list)))
        elif isinstance(node, list):
            stack.extend((v, inherited) for v in node if isinstance(v, (dict, list)))
    return None


def iter_html_page(path: Path, name: str, record_no: int) -> Iterator[RawItem]:
    """The conversation of one saved page (one record), or an error item saying why not."""
    loc = Location(name, record_no, None)
    try:
        # Invalid bytes survive as lone surrogates and make the record malformed (textcheck).
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as exc:
        yield RawItem(loc, error=f"cannot read: {exc.strerror or exc}", container="html")
        return
    found: dict[str, Any] | None = None
    deep: str | None = None
    for m in SCRIPT.finditer(text):
        attrs, body = m.group(1), m.group(2).strip()
        if not body:
            continue
        is_json = "application/json" in attrs.lower() or "__NEXT_DATA__" in attrs
        if not is_json:
            body = ASSIGN.sub("", body, count=1).rstrip().rstrip(";")
            if not body.startswith("{"):
                continue
        try:
            data = json.loads(body)
        except RecursionError:
            deep = too_deep(body)
            continue
        except ValueError:
            continue
        found = find_conversation(data)
        if found is not None:
            line = text.count("\n", 0, m.start(2)) + 1
            loc = Location(name, record_no, line)
            break
    if found is None:
        error = deep or "no embedded conversation JSON found in the page"
        yield RawItem(loc, error=error, container="html")
        return
    problem = bad_text(found, text)
    if problem is not None:
        yield RawItem(loc, found, error=problem, container="html")
        return
    found.setdefault("id", path.stem)
    found["id"] = str(found["id"])
    yield RawItem(loc, found, container="html")
