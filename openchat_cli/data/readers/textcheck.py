"""Checks every reader applies to a parsed record, so one policy holds for JSON arrays, JSONL and
HTML pages: text that is not valid Unicode (invalid UTF-8 bytes, or a lone surrogate written as a
`\\ud800` escape) makes the record malformed, named by its field, instead of being replaced with
U+FFFD in one container, dropped in another, or crashing the writer.

Readers decode bytes with `surrogateescape`, so an invalid byte survives as a lone surrogate in
the parsed strings and is found (and named) here together with escaped lone surrogates.
"""

from __future__ import annotations

import json
import re
from typing import Any

# Text that may hold a lone surrogate: a raw one (an invalid byte, kept by surrogateescape) or a
# \uD800-\uDFFF escape (valid pairs match too; the walk below tells them apart).
_MAYBE_BAD = re.compile(r"[\ud800-\udfff]|\\u[dD][89abcdefABCDEF]")
_LONE = re.compile(r"[\ud800-\udfff]")
# Tokens for finding the field where nesting runs deep: strings (possibly escaped), brackets, ':' ','
_PATH_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[{}\[\],:]', re.S)


def may_hold_bad_text(text: str, start: int = 0, end: int | None = None) -> bool:
    """Cheap pre-check on the raw JSON text before walking the parsed value."""
    return _MAYBE_BAD.search(text, start, len(text) if end is None else end) is not None


def _describe(ch: str, raw: str | None, start: int, end: int | None) -> str:
    code = ord(ch)
    # surrogateescape keeps invalid byte 0xNN as U+DCNN, literally in the raw text; the same
    # code point written as a \\udcNN escape is a lone surrogate.
    if 0xDC80 <= code <= 0xDCFF and (raw is None or raw.find(ch, start, len(raw) if end is None else end) >= 0):
        return f"invalid UTF-8 (byte 0x{code - 0xDC00:02x})"
    return f"lone surrogate \\u{code:04x} (not valid Unicode)"


def bad_text(value: Any, raw: str | None = None, start: int = 0, end: int | None = None) -> str | None:
    """'field 'a[1].b': what is wrong' for the first string (or key) in `value` that is not valid
    Unicode, or None; `raw[start:end]` is the text it was parsed from (to tell an invalid byte
    from an escaped lone surrogate). Walks without recursion, so any nesting depth is safe."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, str):
            m = _LONE.search(node)
            if m:
                return f"field '{path or '(record)'}': {_describe(m.group(), raw, start, end)}"
        elif isinstance(node, dict):
            items = list(node.items())
            for key, child in reversed(items):
                sub = f"{path}.{key}" if path else str(key)
                m = _LONE.search(key) if isinstance(key, str) else None
                if m:
                    return f"field '{printable(sub)}' (its name): {_describe(m.group(), raw, start, end)}"
                stack.append((sub, child))
        elif isinstance(node, list):
            for i in range(len(node) - 1, -1, -1):
                stack.append((f"{path}[{i}]", node[i]))
    return None


def printable(text: str) -> str:
    """`text` with lone surrogates written as \\udXXX escapes, so it can be written as UTF-8."""
    if _LONE.search(text) is None:
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def deep_field(text: str, start: int = 0, end: int | None = None, show: int = 4) -> str:
    """The field where a record nests too deep to parse, e.g. `extra[0][0][0]…`, found by a flat
    scan of the raw text (the record itself cannot be parsed)."""
    stack: list[list[Any]] = []  # [bracket, key or index]
    last = None
    for m in _PATH_TOKEN.finditer(text, start, len(text) if end is None else end):
        tok = m.group()
        if tok[0] == '"':
            last = tok
        elif tok == ":":
            if stack and stack[-1][0] == "{" and last is not None:
                try:
                    stack[-1][1] = json.loads(last)
                except ValueError:
                    stack[-1][1] = last.strip('"')
        elif tok == ",":
            if stack and stack[-1][0] == "[":
                stack[-1][1] += 1
        elif tok in "{[":
            stack.append([tok, None if tok == "{" else 0])
            if len(stack) > show + 1:
                break
        elif stack:
            stack.pop()
    path = ""
    for bracket, key in stack[:-1]:
        if bracket == "{":
            path += f".{key}" if path else str(key)
        else:
            path += f"[{key}]"
    return (path or "(record)") + ("…" if len(stack) > show + 1 else "")


def too_deep(text: str, start: int = 0, end: int | None = None) -> str:
    """The error detail for a record Python's JSON parser cannot nest into."""
    return f"field '{deep_field(text, start, end)}': nested too deep to read (invalid JSON for this tool)"
