"""The help screen: every key binding, in one place."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static

SECTIONS: list[tuple[str, list[tuple[str, str]]]] = [
    (
        "Chat",
        [
            ("enter", "send the message"),
            ("esc", "stop the reply (the partial reply is kept and saved)"),
            ("ctrl+r", "retry after an error, or ask again"),
            ("ctrl+n", "new chat"),
            ("F2 / F8", "rename / delete this chat"),
            ("ctrl+o", "settings: system prompt, condition, temperature, max tokens"),
            ("ctrl+l", "pick a model the server serves"),
            ("ctrl+y", "copy the last reply"),
            ("c", "copy the focused message (click it, or tab to it)"),
            ("pgup / pgdn", "scroll; scrolling up stops following a reply"),
            ("ctrl+b", "show or hide the chat list"),
            ("tab", "move between the input, the chat list and the messages"),
            ("chat list", "enter opens · r renames · d deletes"),
        ],
    ),
    (
        "Verdicts",
        [
            ("ctrl+t", "switch between chat and verdicts"),
            ("enter", "open the run or question under the cursor"),
            ("esc", "back"),
            ("f / d", "focus the filters / only disagreements (flipped on swap)"),
            ("n / p", "next / previous question"),
        ],
    ),
    (
        "Everywhere",
        [
            ("F1", "this help"),
            ("ctrl+p", "command palette"),
            ("ctrl+q", "quit"),
        ],
    ),
]


def help_table() -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    for i, (title, rows) in enumerate(SECTIONS):
        if i:
            table.add_row("", "")
        table.add_row(Text(title, style="bold underline"), "")
        for key, what in rows:
            table.add_row(Text(key, style="bold"), what)
    return table


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,f1,q", "dismiss(None)", "Close")]

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="help"):
            yield Label("openchat chat · keys  (esc closes)", classes="dialog-title")
            with VerticalScroll():
                yield Static(help_table(), id="help-keys")
