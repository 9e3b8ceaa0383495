"""Chat message widgets: one bordered Markdown block per message, and an error block."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import Markdown, Static

from tui.markdown_text import with_line_breaks


class MessageView(Vertical, can_focus=True):
    """A user or assistant message. Focus it (click, or tab) and press c to copy it."""

    BINDINGS = [
        Binding("c", "copy", "Copy message"),
        Binding("up,k", "step(-1)", "Previous", show=False),
        Binding("down,j", "step(1)", "Next", show=False),
    ]

    def __init__(self, role: str, content: str = "", *, label: str | None = None,
                 note: str | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.role = role
        self.content = content
        self.add_class(f"-{role}")
        self.border_title = label or ("you" if role == "user" else "assistant")
        if note:
            self.border_subtitle = note

    def compose(self) -> ComposeResult:
        yield Markdown(with_line_breaks(self.content))

    @property
    def markdown(self) -> Markdown:
        return self.query_one(Markdown)

    def set_note(self, note: str | None, cls: str | None = None) -> None:
        self.border_subtitle = note or ""
        if cls:
            self.add_class(cls)

    def action_copy(self) -> None:
        self.app.copy_to_clipboard(self.content)
        self.app.notify(f"Copied the {'reply' if self.role == 'assistant' else 'message'} "
                        f"({len(self.content)} characters).", timeout=2)

    def action_step(self, delta: int) -> None:
        views = list(self.parent.query(MessageView)) if self.parent else []
        if self in views:
            index = views.index(self) + delta
            if 0 <= index < len(views):
                views[index].focus()
                views[index].scroll_visible()


class ErrorView(Static):
    """A failed request, said plainly, with what to do next."""

    def __init__(self, message: str, hint: str = "", *, kind: str = "error", **kwargs) -> None:
        text = message + (f"\n{hint}" if hint else "")
        super().__init__(text, markup=False, **kwargs)
        self.kind = kind
        self.border_title = {"unreachable": "server unreachable", "auth": "not authorized",
                             "not_found": "model not found", "context": "too long",
                             }.get(kind, "error")
