"""HTML to Markdown for ShareGPT pages and dumps (stdlib only).

ChatGPT rendered replies as HTML (`<div class="markdown prose">`, `<pre>` code blocks with a
header holding the language and a "Copy code" button); this turns them back into the Markdown
the model should learn to write: code fences with their language, lists, tables, headings,
emphasis, links. Page chrome ("Copy code", "N / N" regenerate counters, "Copy N chars / N
words") is removed.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

VOID = {"br", "hr", "img", "input", "meta", "link", "area", "base", "col", "embed", "source",
        "track", "wbr"}
SKIP = {"script", "style", "button", "svg", "head", "title", "noscript", "template", "iframe",
        "textarea", "select", "form", "nav"}
BLOCK = {"p", "div", "section", "article", "main", "header", "footer", "body", "html", "ul", "ol",
         "li", "pre", "blockquote", "table", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "dl",
         "dt", "dd", "figure", "figcaption", "details", "summary", "aside"}

LOOKS_HTML = re.compile(
    r"^\s*(?:\d+\s*/\s*\d+\s*)?<(?:div|p|pre|ol|ul|h[1-6]|table|blockquote)\b[^>]*>", re.I)
COUNTER = re.compile(r"^\s*\d+\s*/\s*\d+\s*")
GLUED_COUNTER = re.compile(r"^\s*\d+ / \d+(?=\S)")
COPY_CHARS = re.compile(r"Copy\d+ chars / \d+ words")
COPY_CODE = re.compile(r"^\s*([\w+#.-]*)Copy code\s*$")
FENCE = re.compile(r"^\s*(`{3,})(.*)$")
LANG_CLASS = re.compile(r"(?:^|\s)(?:language|lang)-([\w+#.-]+)")


class Node:
    __slots__ = ("tag", "attrs", "children", "parent")

    def __init__(self, tag: str, attrs: dict[str, str] | None = None, parent: "Node | None" = None):
        self.tag = tag
        self.attrs = attrs or {}
        self.children: list["Node | str"] = []
        self.parent = parent

    def text(self) -> str:
        """All text below this node, exactly as written (buttons and scripts left out)."""
        out: list[str] = []
        for c in self.children:
            if isinstance(c, str):
                out.append(c)
            elif c.tag == "br":
                out.append("\n")
            elif c.tag not in SKIP:
                out.append(c.text())
        return "".join(out)

    def find(self, tag: str) -> "Node | None":
        for c in self.children:
            if isinstance(c, Node):
                if c.tag == tag:
                    return c
                found = c.find(tag)
                if found is not None:
                    return found
        return None


class _TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("root")
        self.cur = self.root

    def handle_starttag(self, tag, attrs):
        node = Node(tag, {k: v or "" for k, v in attrs}, self.cur)
        # A new <p> or <li> closes an open one (HTML's implied end tags).
        if tag in ("p", "li") and self.cur.tag == tag:
            self.cur = self.cur.parent or self.root
            node.parent = self.cur
        self.cur.children.append(node)
        if tag not in VOID:
            self.cur = node

    def handle_startendtag(self, tag, attrs):
        self.cur.children.append(Node(tag, {k: v or "" for k, v in attrs}, self.cur))

    def handle_endtag(self, tag):
        node = self.cur
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.cur = node.parent

    def handle_data(self, data):
        self.cur.children.append(data)


def parse(html: str) -> Node:
    builder = _TreeBuilder()
    builder.feed(html)
    builder.close()
    return builder.root


def looks_like_html(text: str) -> bool:
    return bool(LOOKS_HTML.match(text))


def html_to_markdown(html: str) -> str:
    """Markdown for an HTML fragment, with page chrome removed."""
    text = _blocks(parse(html).children)
    return strip_chrome(text, converted=True)


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
            if all(not l.strip() for l in out[open_at + 1:]):
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


# -- rendering ------------------------------------------------------------------------------
def _collapse(text: str) -> str:
    return re.sub(r"[ \t\r\n\f]+", " ", text)


def _is_block(node: Node) -> bool:
    return node.tag in BLOCK


def _blocks(children: list["Node | str"], sep: str = "\n\n") -> str:
    """Render a sequence of nodes as Markdown blocks."""
    parts: list[str] = []
    inline: list[str] = []

    def flush() -> None:
        text = "".join(inline)
        inline.clear()
        text = "\n".join(line.strip() for line in text.split("\n")).strip()
        if text:
            parts.append(text)

    for c in children:
        if isinstance(c, str):
            inline.append(_collapse(c))
        elif c.tag in SKIP:
            continue
        elif c.tag == "br":
            inline.append("\n")
        elif _is_block(c):
            flush()
            block = _block(c)
            if block.strip():
                parts.append(block)
        else:
            inline.append(_inline(c))
    flush()
    return sep.join(parts)


def _inline_children(node: Node) -> str:
    out: list[str] = []
    for c in node.children:
        if isinstance(c, str):
            out.append(_collapse(c))
        elif c.tag in SKIP:
            continue
        elif c.tag == "br":
            out.append("\n")
        elif _is_block(c):
            out.append(" " + _block(c) + " ")
        else:
            out.append(_inline(c))
    return "".join(out)


def _wrap(text: str, mark: str) -> str:
    """Emphasis around text, keeping outer spaces outside the markers."""
    stripped = text.strip()
    if not stripped:
        return text
    lead = text[: len(text) - len(text.lstrip())]
    trail = text[len(text.rstrip()):]
    return f"{lead}{mark}{stripped}{mark}{trail}"


def _inline(node: Node) -> str:
    tag = node.tag
    if tag in ("strong", "b"):
        return _wrap(_inline_children(node), "**")
    if tag in ("em", "i"):
        return _wrap(_inline_children(node), "*")
    if tag in ("del", "s", "strike"):
        return _wrap(_inline_children(node), "~~")
    if tag == "code":
        code = node.text()
        ticks = "`" * (max((len(r) for r in re.findall(r"`+", code)), default=0) + 1)
        pad = " " if code.startswith("`") or code.endswith("`") else ""
        return f"{ticks}{pad}{code}{pad}{ticks}"
    if tag == "a":
        label = _inline_children(node).strip()
        href = node.attrs.get("href", "")
        if not href or href.startswith(("javascript:", "#")) or href == label:
            return label or href
        return f"[{label or href}]({href})"
    if tag == "img":
        alt = node.attrs.get("alt", "")
        src = node.attrs.get("src", "")
        return f"![{alt}]({src})" if src and not src.startswith("data:") else alt
    return _inline_children(node)


def _indent(text: str, first: str, rest: str) -> str:
    lines = text.split("\n")
    return "\n".join([first + lines[0]] + [(rest + l) if l.strip() else "" for l in lines[1:]])


def _block(node: Node) -> str:
    tag = node.tag
    if tag == "p" or tag in ("dt", "summary", "figcaption"):
        return "\n".join(l.strip() for l in _inline_children(node).split("\n")).strip()
    if tag in ("h1", "h2", "h3", "h4", "h5", "h6"):
        return "#" * int(tag[1]) + " " + _collapse(_inline_children(node)).strip()
    if tag in ("ul", "ol"):
        return _list(node)
    if tag == "li":
        return _list_item(node, "- ")
    if tag == "pre":
        return _code_block(node)
    if tag == "blockquote":
        inner = _blocks(node.children)
        return "\n".join("> " + l if l else ">" for l in inner.split("\n"))
    if tag == "hr":
        return "---"
    if tag == "table":
        return _table(node)
    if tag == "dd":
        return _indent(_blocks(node.children), ": ", "  ")
    return _blocks(node.children)


def _list(node: Node) -> str:
    ordered = node.tag == "ol"
    try:
        n = int(node.attrs.get("start", "1"))
    except ValueError:
        n = 1
    items: list[str] = []
    for c in node.children:
        if isinstance(c, str):
            if c.strip():
                items.append(_list_item_text(_collapse(c).strip(), "- "))
            continue
        if c.tag in SKIP:
            continue
        marker = f"{n}. " if ordered else "- "
        if c.tag == "li":
            items.append(_list_item(c, marker))
            n += 1
        elif c.tag in ("ul", "ol"):
            items.append(_indent(_list(c), "  ", "  "))
        else:
            items.append(_list_item(c, marker))
            n += 1
    loose = any(isinstance(c, Node) and c.tag == "li" and any(
        isinstance(g, Node) and g.tag == "p" for g in c.children) for c in node.children)
    return ("\n\n" if loose else "\n").join(i for i in items if i.strip())


def _list_item(node: Node, marker: str) -> str:
    return _list_item_text(_blocks(node.children, sep="\n"), marker)


def _list_item_text(text: str, marker: str) -> str:
    return _indent(text, marker, " " * len(marker))


def _code_block(pre: Node) -> str:
    code = pre.find("code")
    lang = ""
    for node in (code, pre):
        if node is not None:
            m = LANG_CLASS.search(node.attrs.get("class", ""))
            if m:
                lang = m.group(1)
                break
    if code is not None:
        body = code.text()
        if not lang:
            lang = _header_language(pre, code)
    else:
        body = pre.text()
    body = body.strip("\n")
    if not body.strip():
        return ""
    fence = "```"
    while fence in body:
        fence += "`"
    return f"{fence}{lang}\n{body}\n{fence}"


def _header_language(pre: Node, code: Node) -> str:
    """ChatGPT's code header: a short word (the language) before the code, beside 'Copy code'."""
    texts: list[str] = []

    def walk(node: Node) -> bool:
        for c in node.children:
            if c is code:
                return True
            if isinstance(c, str):
                texts.append(c)
            elif c.tag not in SKIP and walk(c):
                return True
        return False

    walk(pre)
    words = " ".join(texts).replace("Copy code", " ").split()
    return words[0] if len(words) == 1 and re.fullmatch(r"[\w+#.-]{1,24}", words[0]) else ""


def _table(table: Node) -> str:
    rows: list[list[str]] = []
    header_rows = 0

    def collect(node: Node, in_head: bool) -> None:
        nonlocal header_rows
        for c in node.children:
            if not isinstance(c, Node):
                continue
            if c.tag == "tr":
                cells = [
                    _collapse(_inline_children(cell)).strip().replace("|", "\\|")
                    for cell in c.children if isinstance(cell, Node) and cell.tag in ("td", "th")
                ]
                is_head = in_head or all(isinstance(cell, Node) and cell.tag == "th"
                                         for cell in c.children if isinstance(cell, Node))
                if is_head and len(rows) == header_rows:
                    header_rows += 1
                rows.append(cells)
            elif c.tag in ("thead", "tbody", "tfoot"):
                collect(c, c.tag == "thead")

    collect(table, False)
    if not rows:
        return ""
    width = max(len(r) for r in rows)
    rows = [r + [""] * (width - len(r)) for r in rows]
    head, body = rows[0], rows[1:]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join([" --- "] * width) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)
