"""Helpers for the `openchat data` tests: inputs in every supported shape."""

from __future__ import annotations

import html
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def write_jsonl(path: Path, records: Iterable[Any]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def sharegpt(cid: str, *turns: str, model: str | None = None, roles=("human", "gpt")) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "id": cid,
        "conversations": [{"from": roles[i % len(roles)], "value": t} for i, t in enumerate(turns)],
    }
    if model is not None:
        rec["model"] = model
    return rec


def share_page(cid: str, items: list[dict[str, str]], model: str | None = None, title: str = "Chat") -> str:
    """A saved ShareGPT share page: Next.js shell with the conversation in __NEXT_DATA__."""
    content: dict[str, Any] = {"title": title, "items": items}
    if model:
        content["model"] = model
    data = {
        "props": {"pageProps": {"id": cid, "content": content}},
        "page": "/c/[id]",
        "query": {"id": cid},
        "buildId": "abc",
    }
    rendered = "".join(f"<div class='turn'>{html.escape(i['value'][:40])}</div>" for i in items)
    return (
        "<!DOCTYPE html><html><head><title>ShareGPT</title>"
        "<script>window.dataLayer = [];</script></head><body>"
        f"<div id='__next'><main>{rendered}<button>Copy</button></main></div>\n"
        f'<script id="__NEXT_DATA__" type="application/json">{json.dumps(data)}</script>'
        "</body></html>"
    )


CHATGPT_REPLY = (
    '<div class="markdown prose w-full break-words dark:prose-invert light"><p>Here is a '
    '<strong>function</strong> that adds numbers:</p><pre><div class="bg-black mb-4 rounded-md">'
    '<div class="flex items-center relative text-gray-200 bg-gray-800 px-4 py-2 text-xs font-sans">'
    '<span class="">python</span><button class="flex ml-auto gap-2"><svg stroke="currentColor">'
    '<path d="M16 4h2"></path></svg>Copy code</button></div><div class="p-4 overflow-y-auto">'
    '<code class="!whitespace-pre hljs language-python"><span class="hljs-keyword">def</span> '
    '<span class="hljs-title function_">add</span>(<span class="hljs-params">a, b</span>):\n'
    '    <span class="hljs-keyword">return</span> a + b\n</code></div></div></pre>'
    "<p>Use it like <code>add(1, 2)</code> &amp; you get 3.</p><ul><li>fast</li><li>simple</li></ul></div>"
)

CHATGPT_MARKDOWN = (
    "Here is a **function** that adds numbers:\n\n```python\ndef add(a, b):\n    return a + b\n```\n\n"
    "Use it like `add(1, 2)` & you get 3.\n\n- fast\n- simple"
)
