"""Chat message widgets: one bordered block per message, and an error block.

A streamed reply reaches its Markdown widget in batches at most FLUSH_S apart, not per token:
each append re-lays out the message, so appending per token (with a `:last-child` rule that
restyled every block on each mount, see flush_markdown.py) made a long reply quadratic: 12k
characters took 16 s, 42.6k now take about 4.5 s (benchmarks/bench_tui.py). Every text is
shown literally: labels and notes go through `plain`, never markup.
"""

from __future__ import annotations

import time

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.timer import Timer
from textual.widgets import Markdown, Static
from textual.widgets.markdown import MarkdownStream

from tui.literal import plain
from tui.markdown_text import LineBreaks, with_line_breaks
from tui.widgets.flush_markdown import FlushMarkdown

FLUSH_S = 1 / 20  # at most this often a streamed reply's new text goes to the screen


class MessageView(Vertical, can_focus=True):
    """A user or assistant message. Focus it (click, or tab) and press c to copy it."""

    BINDINGS = [
        Binding("c", "copy", "Copy message"),
        Binding("up,k", "step(-1)", "Previous", show=False),
        Binding("down,j", "step(1)", "Next", show=False),
    ]

    def __init__(
        self, role: str, content: str = "", *, label: str | None = None, note: str | None = None, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        self.role = role
        self._parts = [content]
        self.add_class(f"-{role}")
        self.border_title = plain(label or ("you" if role == "user" else "assistant"))
        if note:
            self.border_subtitle = plain(note)
        self._breaks: LineBreaks | None = None
        self._stream: MarkdownStream | None = None
        self._unshown: list[str] = []
        self._shown_at = 0.0
        self._timer: Timer | None = None

    @property
    def content(self) -> str:
        """The message's text as written (before line breaks are made hard)."""
        if len(self._parts) > 1:
            self._parts = ["".join(self._parts)]
        return self._parts[0]

    def compose(self) -> ComposeResult:
        yield FlushMarkdown(with_line_breaks(self.content))

    @property
    def markdown(self) -> Markdown:
        return self.query_one(Markdown)

    async def start_stream(self) -> None:
        """Get ready to show a reply that arrives in fragments (`write`, then `end_stream`)."""
        self._breaks = LineBreaks()
        self._stream = Markdown.get_stream(self.markdown)

    async def write(self, fragment: str) -> None:
        """Add a fragment of the reply. Fragments are shown in batches at most FLUSH_S apart:
        a model (or a fast server) sends far more fragments than the screen can show."""
        self._parts.append(fragment)
        self._unshown.append(fragment)
        if time.monotonic() - self._shown_at >= FLUSH_S:
            await self._show()
        elif self._timer is None:  # shown soon even if no fragment follows
            self._timer = self.set_timer(FLUSH_S, self._show)

    async def _show(self) -> None:
        """Pass the unshown text to the Markdown stream (which batches further while busy)."""
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
        if self._breaks is None or self._stream is None or not self._unshown:
            return
        text, self._unshown = "".join(self._unshown), []
        self._shown_at = time.monotonic()
        await self._stream.write(self._breaks.feed(text))

    async def end_stream(self) -> None:
        """Show what is still queued and stop streaming."""
        if self._stream is not None:
            if self._unshown:
                await self._show()
            stream, self._stream = self._stream, None
            await stream.stop()

    def set_note(self, note: str | None, cls: str | None = None) -> None:
        self.border_subtitle = plain(note or "")
        if cls:
            self.add_class(cls)

    def action_copy(self) -> None:
        self.app.copy_to_clipboard(self.content)
        self.app.notify(
            f"Copied the {'reply' if self.role == 'assistant' else 'message'} ({len(self.content)} characters).",
            timeout=2,
        )

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
        super().__init__(plain(text), markup=False, **kwargs)
        self.kind = kind
        self.border_title = {
            "unreachable": "server unreachable",
            "auth": "not authorized",
            "not_found": "model not found",
            "context": "too long",
        }.get(kind, "error")
