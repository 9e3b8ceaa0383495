"""Self-contained HTML pages (`eval report --html`, `data map`, `catalog plot --html`).

One file a user can mail or open offline: plotly.js is inlined once (no CDN), the page's data
rides along as JSON in a `<script type="application/json">` block, and the file is written to a
temp name and renamed so a reader never sees half a page.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from openchat_cli.atomic import atomic_write_text
from openchat_cli.errors import OpenchatError

BASE_CSS = """
body { margin: 0; font: 14px/1.45 system-ui, sans-serif; color: #1f2328; }
header { padding: 10px 18px; border-bottom: 1px solid #d0d7de; background: #f6f8fa; }
header h1 { margin: 0; font-size: 18px; }
header p { margin: 2px 0 0; color: #57606a; font-size: 12px; }
main { padding: 12px 18px; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 13px; }
th, td { border: 1px solid #d0d7de; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
pre, .text { white-space: pre-wrap; word-break: break-word; font: 13px ui-monospace, monospace; }
"""


def plotly_js() -> str:
    """plotly.js as shipped inside the plotly Python package (minified), for inlining."""
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def script_json(data: Any) -> str:
    """JSON safe inside a <script> element: no '</' can close it early, no NaN."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), default=str)
    return text.replace("</", "<\\/").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def figure_div(figure: Any, div_id: str, height: int | None = None) -> str:
    """A plotly figure as a <div> plus the call that draws it (plotly.js comes once per page)."""
    if height is not None:
        figure.update_layout(height=height)
    return figure.to_html(
        full_html=False, include_plotlyjs=False, div_id=div_id, config={"displaylogo": False, "responsive": True}
    )


def page(
    title: str,
    body: str,
    *,
    subtitle: str = "",
    css: str = "",
    data: Any = None,
    scripts: Iterable[str] = (),
    with_plotly: bool = True,
) -> str:
    """The whole document: head with styles, plotly.js, the JSON data block, body, our scripts."""
    parts = [
        "<!doctype html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title>",
        '<link rel="icon" href="data:,">',
        f"<style>{BASE_CSS}{css}</style>",
    ]
    if with_plotly:
        parts.append(f'<script type="text/javascript">{plotly_js()}</script>')
    parts += [
        "</head>",
        "<body>",
        f"<header><h1>{html.escape(title)}</h1>"
        + (f"<p>{html.escape(subtitle)}</p>" if subtitle else "")
        + "</header>",
        f"<main>{body}</main>",
    ]
    if data is not None:
        parts.append(f'<script type="application/json" id="page-data">{script_json(data)}</script>')
    parts += [f"<script>{script}</script>" for script in scripts]
    parts += ["</body>", "</html>"]
    return "\n".join(parts)


def write_page(path: Path | str, document: str) -> Path:
    """Write the page whole or not at all (temp file beside it, then rename)."""
    path = Path(path)
    try:
        atomic_write_text(path, document)
    except OSError as exc:
        raise OpenchatError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


def table(columns: list[str], rows: list[list[Any]], *, table_id: str | None = None) -> str:
    """A plain HTML table; cells are escaped text (newlines become line breaks)."""

    def cell(value: Any) -> str:
        return html.escape("" if value is None else str(value)).replace("\n", "<br>")

    head = "".join(f"<th>{cell(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    ident = f' id="{html.escape(table_id)}"' if table_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
