"""A one-line footer of key bindings.

Textual's Footer builds a widget per key and rebuilds them on every focus or binding change,
which is slow on small machines; this renders the same information as one line of text and
still runs a binding's action when its key is clicked.
"""

from __future__ import annotations

from rich.text import Text
from textual import events
from textual.widgets import Static


class KeyBar(Static):
    DEFAULT_CSS = """
    KeyBar {
        dock: bottom;
        height: 1;
        width: 1fr;
        background: $footer-background;
        color: $footer-foreground;
        text-wrap: nowrap;
        text-overflow: ellipsis;
    }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__("", **kwargs)
        self._spans: list[tuple[int, int, str, object]] = []
        self._last: tuple | None = None

    def on_mount(self) -> None:
        self.screen.bindings_updated_signal.subscribe(self, self.bindings_changed)
        self.call_after_refresh(self.bindings_changed, self.screen)

    def bindings_changed(self, screen) -> None:
        if not self.is_attached or screen is not self.screen:
            return
        entries = []
        seen_actions = set()
        for node, binding, enabled, _tooltip in screen.active_bindings.values():
            if not binding.show or binding.action in seen_actions:
                continue
            seen_actions.add(binding.action)
            entries.append((self.app.get_key_display(binding), binding.description, enabled, binding.action, node))
        key = tuple((k, d, e, a) for k, d, e, a, _ in entries)
        if key == self._last:
            return
        self._last = key
        text = Text(no_wrap=True, overflow="ellipsis")
        spans = []
        for display, description, enabled, action, node in entries:
            start = len(text)
            text.append(f" {display} ", style=self._key_style(enabled))
            text.append(f"{description} ", style="" if enabled else "dim")
            spans.append((start, len(text), action, node))
        self._spans = spans
        self.update(text)

    def _key_style(self, enabled: bool) -> str:
        if not enabled:
            return "dim"
        color = self.app.current_theme.accent if self.app.current_theme else None
        return f"bold {color}" if color else "bold"

    async def on_click(self, event: events.Click) -> None:
        for start, end, action, node in self._spans:
            if start <= event.x < end:
                await self.app.run_action(action, node)
                return
