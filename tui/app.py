"""`openchat chat`: the Textual app. Two modes, each with its own screen stack:

- chat: talk to a served model (tui/screens/chat.py);
- verdicts: browse judge and grade runs from the catalog (tui/screens/verdicts.py).

ctrl+t switches between them, F1 shows every key.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from textual.app import App
from textual.binding import Binding
from textual.notifications import SeverityLevel

from store.catalog import Catalog, CatalogError, open_catalog
from tui.client import DEFAULT_ENDPOINT, ChatClient
from tui.screens.chat import ChatScreen
from tui.screens.help import HelpScreen
from tui.screens.settings import ChatSettings
from tui.screens.verdicts import RunsScreen


def short_endpoint(endpoint: str) -> str:
    """'http://127.0.0.1:18888/v1' -> '127.0.0.1:18888' (the path only when it is not /v1)."""
    parsed = urlparse(endpoint)
    if not parsed.netloc:
        return endpoint
    path = parsed.path.rstrip("/")
    return parsed.netloc + ("" if path in ("", "/v1") else path)


class OpenChatApp(App):
    CSS_PATH = "openchat.tcss"
    TITLE = "openchat chat"
    ENABLE_COMMAND_PALETTE = True
    BINDINGS = [
        Binding("f1", "help", "Help"),
        Binding("ctrl+t", "toggle_mode", "Chat / verdicts", show=False),
        Binding("ctrl+q", "quit", "Quit", priority=True, show=False),
    ]

    def __init__(
        self,
        *,
        endpoint: str = DEFAULT_ENDPOINT,
        model: str | None = None,
        api_key: str | None = None,
        settings: ChatSettings | None = None,
        chat_id: str | None = None,
        verdicts: str | None = None,
        catalog: Catalog | Path | str | None = None,
        endpoint_label: str | None = None,
    ) -> None:
        """`verdicts`: None opens the chat; "" opens the list of eval runs; an eval id opens
        that run. `endpoint_label` replaces the endpoint shown in the top bar (tests use it to
        keep snapshots stable across random ports)."""
        super().__init__()
        self.client = ChatClient(endpoint, api_key)
        self.model = model
        self.default_settings = settings or ChatSettings()
        self.initial_chat_id = chat_id
        self.verdicts = verdicts
        self._catalog_arg = catalog
        self.catalog: Catalog = catalog if isinstance(catalog, Catalog) else open_catalog(catalog)
        self.endpoint_label = endpoint_label or short_endpoint(self.client.endpoint)
        self.catalog_error: CatalogError | None = None  # why the app ended early, if it did

    def notify(
        self,
        message: str,
        *,
        title: str = "",
        severity: SeverityLevel = "information",
        timeout: float | None = None,
        markup: bool = True,
    ) -> None:
        """Every notification is shown literally: they quote titles, model names and errors."""
        super().notify(message, title=title, severity=severity, timeout=timeout, markup=False)

    def _handle_exception(self, error: Exception) -> None:
        """A catalog that turns damaged or locked mid-session ends the app with its one line
        (`openchat chat` prints it, exit 2) rather than a traceback."""
        if isinstance(error, CatalogError):
            if self.catalog_error is None:
                self.catalog_error = error
            self.exit(return_code=2)
            return
        super()._handle_exception(error)

    async def on_mount(self) -> None:
        self.add_mode("chat", ChatScreen)
        self.add_mode("verdicts", RunsScreen)
        if self.verdicts is None:
            await self.switch_mode("chat")
            return
        await self.switch_mode("verdicts")
        if self.verdicts:
            runs = self.screen
            if isinstance(runs, RunsScreen):
                runs.open_run(self.verdicts)

    async def on_unmount(self) -> None:
        await self.client.close()
        if not isinstance(self._catalog_arg, Catalog):
            self.catalog.close()

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    async def action_toggle_mode(self) -> None:
        await self.switch_mode("verdicts" if self.current_mode == "chat" else "chat")


def resolve_chat(catalog: Catalog, ref: str) -> str:
    """Full chat id from an id or prefix, or a CatalogError."""
    full = catalog.resolve(ref)
    if catalog.table_of(full) != "chats":
        raise CatalogError(f"'{ref}' is not a chat id (chat-…)")
    return full
