"""The sidebar of saved chats: a count, and the chats newest first.

It only shows and picks: enter, r and d post `ChatList.Open`, `Rename` and `Delete` up to the
screen, which owns the store and the dialogs. Titles are shown literally (tui/literal.py).
"""

from __future__ import annotations

from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Label, OptionList
from textual.widgets.option_list import Option

from tui.literal import plain


class ChatOptions(OptionList):
    """The list itself; r renames and d deletes the highlighted chat."""

    BINDINGS = [
        Binding("r", "rename", "Rename"),
        Binding("d,delete", "delete", "Delete"),
    ]

    def highlighted_id(self) -> str | None:
        if self.highlighted is None:
            return None
        return self.get_option_at_index(self.highlighted).id

    def action_rename(self) -> None:
        chat_id = self.highlighted_id()
        self.post_message(ChatList.Rename(chat_id))

    def action_delete(self) -> None:
        chat_id = self.highlighted_id()
        self.post_message(ChatList.Delete(chat_id))


class ChatList(Vertical):
    """Saved chats, newest first. enter opens, r renames, d deletes."""

    class Open(Message):
        def __init__(self, chat_id: str) -> None:
            super().__init__()
            self.chat_id = chat_id

    class Rename(Message):
        """Rename a chat (None: the highlighted row is not a saved chat)."""

        def __init__(self, chat_id: str | None) -> None:
            super().__init__()
            self.chat_id = chat_id

    class Delete(Message):
        def __init__(self, chat_id: str | None) -> None:
            super().__init__()
            self.chat_id = chat_id

    def compose(self) -> ComposeResult:
        yield Label("Chats", id="sidebar-title")
        yield ChatOptions(id="chats")

    @property
    def options(self) -> ChatOptions:
        return self.query_one(ChatOptions)

    def show(self, rows: list[dict[str, Any]], current: str | None) -> None:
        """List `rows` (the store's `recent()`), highlighting the open chat `current`."""
        options = self.options
        options.clear_options()
        highlighted = None
        for i, row in enumerate(rows):
            options.add_option(Option(plain(row["title"] or row["id"]), id=row["id"]))
            if row["id"] == current:
                highlighted = i
        if highlighted is not None:
            options.highlighted = highlighted
        self.query_one("#sidebar-title", Label).update(f"Chats ({len(rows)})" if rows else "Chats")

    def clear_highlight(self) -> None:
        self.options.highlighted = None

    @on(OptionList.OptionSelected, "#chats")
    def opened(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        if event.option.id is not None:
            self.post_message(self.Open(event.option.id))
