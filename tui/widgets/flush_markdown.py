"""Markdown with no blank line under its last block, kept without a `:last-child` CSS rule.

`Markdown > *:last-child` made every widget of the app order-sensitive: each block a streamed
reply mounts restyled all its siblings, so a long reply rendered in quadratic time. Here the
last block's bottom margin is set inline after each update or append, and the block that was
last before gets its stylesheet margin back: constant work per append.
"""

from __future__ import annotations

from textual.await_complete import AwaitComplete
from textual.widget import Widget
from textual.widgets import Markdown
from textual.widgets.markdown import MarkdownBlock


class FlushMarkdown(Markdown):
    """A Markdown widget whose last block has no bottom margin."""

    _trimmed: Widget | None = None

    def update(self, markdown: str) -> AwaitComplete:
        return self._then_trim(super().update(markdown))

    def append(self, markdown: str) -> AwaitComplete:
        return self._then_trim(super().append(markdown))

    def _then_trim(self, done: AwaitComplete) -> AwaitComplete:
        async def trim_after() -> None:
            await done
            self.trim_last_block()

        return AwaitComplete(trim_after())

    def trim_last_block(self) -> None:
        blocks = [child for child in self.children if isinstance(child, MarkdownBlock)]
        last = blocks[-1] if blocks else None
        if last is self._trimmed:
            return
        if self._trimmed is not None and self._trimmed.is_attached:
            self._trimmed.styles.clear_rule("margin")
        self._trimmed = last
        if last is not None:
            top, right, _, left = last.styles.margin
            last.styles.margin = (top, right, 0, left)
