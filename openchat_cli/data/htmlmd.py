"""HTML to Markdown for ShareGPT pages and dumps: markdownify (as FastChat uses for the same
pages) plus what ChatGPT's rendering needs on top.

ChatGPT rendered replies as HTML (`<div class="markdown prose">`, `<pre>` code blocks with a
header holding the language and a "Copy code" button); this turns them back into the Markdown
the model should learn to write. On top of markdownify: the code fence takes its language from
a `language-…` class or that header, and grows longer than any backtick run inside the code;
text is kept as written (no escaping of `*` or `_`); a link whose text is its URL stays a bare
URL; page chrome ("Copy code", "N / N" regenerate counters, "Copy N chars / N words") is removed.
"""

from __future__ import annotations

import re

from markdownify import ATX, MarkdownConverter

LOOKS_HTML = re.compile(r"^\s*(?:\d+\s*/\s*\d+\s*)?<(?:div|p|pre|ol|ul|h[1-6]|table|blockquote)\b[^>]*>", re.I)
COUNTER = re.compile(r"^\s*\d+\s*/\s*\d+\s*")
GLUED_COUNTER = re.compile(r"^\s*\d+ / \d+(?=\S)")
COPY_CHARS = re.compile(r"Copy\d+ chars / \d+ words")
COPY_CODE = re.compile(r"^\s*([\w+#.-]*)Copy code\s*$")
FENCE = re.compile(r"^\s*(`{3,})(.*)$")
LANG_CLASS = re.compile(r"(?:^|\s)(?:language|lang)-([\w+#.-]+)")
LANGUAGE_WORD = re.compile(r"[\w+#.-]{1,24}")
# Elements whose content is page machinery, never message text.
DROPPED = ("button", "svg", "head", "title", "noscript", "template", "iframe", "textarea", "select", "form", "nav")


class ChatMarkdown(MarkdownConverter):
    """markdownify with ChatGPT's code blocks, unescaped text and bare URLs."""

    def __init__(self) -> None:
        super().__init__(
            heading_style=ATX, bullets="-", escape_asterisks=False, escape_underscores=False, escape_misc=False
        )

    def convert_pre(self, el, text, parent_tags):
        code = el.find("code")
        body = (code.get_text() if code is not None else el.get_text()).strip("\n")
        if not body.strip():
            return ""
        fence = "```"
        while fence in body:
            fence += "`"
        return f"\n\n{fence}{_language(el, code)}\n{body}\n{fence}\n\n"

    def convert_a(self, el, text, parent_tags):
        href = el.get("href")
        if href and text.strip() == href:
            return href
        return super().convert_a(el, text, parent_tags)

    def convert_br(self, el, text, parent_tags):
        return "\n"  # a line break in a chat reply, not Markdown's two-space hard break


for _tag in DROPPED:
    setattr(ChatMarkdown, f"convert_{_tag}", lambda self, el, text, parent_tags: "")


def _language(pre, code) -> str:
    """The code's language: a `language-…` class on <code> or <pre>, else ChatGPT's header (one
    short word before the code, beside 'Copy code')."""
    for node in (code, pre):
        if node is not None:
            match = LANG_CLASS.search(" ".join(node.get("class") or []))
            if match:
                return match.group(1)
    if code is None:
        return ""
    words: list[str] = []
    for piece in code.find_all_previous(string=True):
        if pre not in piece.parents:
            break
        if not any(p.name in DROPPED for p in piece.parents):
            words[:0] = piece.split()
    return words[0] if len(words) == 1 and LANGUAGE_WORD.fullmatch(words[0]) else ""


def looks_like_html(text: str) -> bool:
    return bool(LOOKS_HTML.match(text))


def html_to_markdown(html: str) -> str:
    """Markdown for an HTML fragment, with page chrome removed."""
    return strip_chrome(ChatMarkdown().convert(html), converted=True)


def strip_chrome(text: str, converted: bool = False) -> str:
    """Remove ShareGPT page chrome from message text (also used on plain-text messages)."""
    text = COPY_CHARS.sub("", text)
    if converted:
        text = COUNTER.sub("", text, count=1)
        text = _fix_fences(text)
    else:
        text = GLUED_COUNTER.sub("", text, count=1)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


def _fix_fences(text: str) -> str:
    """Drop 'Copy code' chrome lines (a 'pythonCopy code' line opening a fence gives the fence
    its language) and code fences left empty."""
    lines = text.split("\n")
    out: list[str] = []
    open_at: int | None = None  # index in `out` of the open fence
    fence = ""
    for line in lines:
        m = FENCE.match(line)
        if open_at is None:
            if m:
                open_at, fence = len(out), m.group(1)
            elif COPY_CODE.match(line):
                continue
            out.append(line)
            continue
        if m and m.group(1) == fence and not m.group(2).strip():
            if all(not s.strip() for s in out[open_at + 1 :]):
                del out[open_at:]  # an empty code block
            else:
                out.append(line)
            open_at = None
            continue
        cc = COPY_CODE.match(line)
        if cc and len(out) == open_at + 1:  # first line inside the fence: chrome
            if cc.group(1) and not FENCE.match(out[open_at]).group(2).strip():
                out[open_at] = out[open_at].rstrip() + cc.group(1)
            continue
        out.append(line)
    return "\n".join(out)
