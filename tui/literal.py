"""Text from users, models and files, made safe to show: never parsed as Textual markup.

Textual reads a plain `str` as markup in many places (border titles, option lists, table
cells, notifications), so a chat titled `[/INST] … [bold]` raised MarkupError and, the title
being saved, crashed every later start. Whatever did not come from our own code goes through
`plain` (a Content, for titles and options) or `cell` (a rich Text, for DataTable cells).
"""

from __future__ import annotations

from rich.text import Text
from textual.content import Content


def plain(text: object) -> Content:
    """`text` as literal content: brackets, backslashes and escapes shown as they are."""
    return Content(str(text))


def cell(value: object) -> Text:
    """A DataTable cell showing `value` literally (a Text is kept as it is)."""
    return value if isinstance(value, Text) else Text(str(value))
