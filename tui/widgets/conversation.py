"""The conversation: the message views of one chat, a streaming reply, and error blocks.

It shows and streams; it does not save or talk to the server. A reply arrives as an async
iterator of fragments (`stream_reply`); when it ends, for whatever reason, the widget posts
`Conversation.ReplyEnded` up and returns the same outcome, so the screen saves it even when
the app is quitting (a posted message would then never be handled). The view is anchored to
the bottom: it follows a reply until the user scrolls up.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from textual.containers import VerticalScroll
from textual.message import Message
from textual.widgets import Markdown

from tui.client import ChatError
from tui.widgets.messages import ErrorView, MessageView

WELCOME = """\
Type a message below and press **enter**.

- **esc** stops a reply · **ctrl+r** retries after an error
- **ctrl+o** settings (system prompt, condition, temperature)
- **ctrl+l** picks a model · **ctrl+t** judge verdicts
- **F1** all keys
"""


@dataclass
class ReplyOutcome:
    """How a streamed reply ended: its text (maybe partial), and why it ended."""

    view: MessageView
    text: str
    stopped: bool = False
    error: ChatError | None = None


def note_for(meta: dict[str, Any] | None) -> str | None:
    """The word under a saved reply that did not end normally."""
    if not meta:
        return None
    if meta.get("stopped"):
        return "stopped"
    if meta.get("error"):
        return "broken off"
    if meta.get("finish_reason") == "length":
        return "max tokens"
    return None


class Conversation(VerticalScroll):
    """The messages of the open chat (or the welcome text when it has none)."""

    class ReplyEnded(Message):
        def __init__(self, outcome: ReplyOutcome) -> None:
            super().__init__()
            self.outcome = outcome

    def compose(self):
        yield Markdown(WELCOME, id="welcome")

    async def show_welcome(self) -> None:
        await self.remove_children()
        await self.mount(Markdown(WELCOME, id="welcome"))

    async def _drop_welcome(self) -> None:
        for welcome in self.query("#welcome"):
            await welcome.remove()

    async def show_messages(self, messages: list[dict[str, Any]], model: str | None) -> None:
        """Replace what is shown with saved `messages` (role, content, meta)."""
        await self.remove_children()
        views = [
            MessageView(
                m["role"],
                m["content"],
                label="you" if m["role"] == "user" else (m["meta"].get("model") or model),
                note=note_for(m["meta"]),
            )
            for m in messages
        ]
        if views:
            await self.mount_all(views)
        else:
            await self.mount(Markdown(WELCOME, id="welcome"))
        self.anchor()

    async def add_user(self, text: str) -> None:
        await self._drop_welcome()
        await self.mount(MessageView("user", text, label="you"))
        self.anchor()

    async def stream_reply(self, label: str | None, fragments: AsyncIterator[str]) -> ReplyOutcome:
        """Show a reply as its fragments arrive; cancelling the caller stops it (the partial
        text stays). Posts `ReplyEnded` and returns the outcome."""
        view = MessageView("assistant", "", label=label, classes="-streaming")
        await self.mount(view)
        self.anchor()
        await view.start_stream()
        outcome = ReplyOutcome(view, "")
        parts: list[str] = []
        try:
            async for fragment in fragments:
                parts.append(fragment)
                await view.write(fragment)
        except asyncio.CancelledError:
            outcome.stopped = True
        except ChatError as exc:
            outcome.error = exc
        finally:
            try:
                await view.end_stream()
            except Exception:  # noqa: BLE001 - the widget may be gone when the app quits
                pass
        outcome.text = "".join(parts)
        view.remove_class("-streaming")
        self.post_message(self.ReplyEnded(outcome))
        return outcome

    async def show_error(self, error: ChatError) -> None:
        await self._drop_welcome()
        await self.mount(ErrorView(error.message, error.hint, kind=error.kind))
        self.anchor()

    async def clear_errors(self) -> None:
        for view in self.query(ErrorView):
            await view.remove()

    def last_reply(self) -> MessageView | None:
        replies = [v for v in self.query(MessageView) if v.role == "assistant"]
        return replies[-1] if replies else None

    def page(self, direction: int) -> None:
        """Page through the conversation (up stops following a reply; the end resumes it)."""
        if direction < 0:
            self.scroll_page_up(animate=False)
        else:
            self.scroll_page_down(animate=False)
