"""The chats the TUI saves, on the catalog's API (store/catalog.py, store/reads.py).

The chat screen says what it wants (`store.open(chat_id)`, `store.rename(...)`) and never how
rows are kept: this is the one module of the TUI that knows the chats and chat_messages tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from store.catalog import Catalog, CatalogError

SHOWN_ROLES = ("user", "assistant")  # what a conversation shows and sends back


@dataclass
class SavedChat:
    """One saved chat: its row (title, model, settings) and its messages, oldest first."""

    row: dict[str, Any]
    messages: list[dict[str, Any]] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.row["id"]

    @property
    def title(self) -> str | None:
        return self.row.get("title")

    def shown(self) -> list[dict[str, Any]]:
        """The user and assistant messages, each with `meta` as a dict."""
        return [
            {**m, "content": m["content"] or "", "meta": m.get("meta") if isinstance(m.get("meta"), dict) else {}}
            for m in self.messages
            if m["role"] in SHOWN_ROLES
        ]

    def history(self) -> list[dict[str, str]]:
        """What is sent back to the model: role and content of each shown message."""
        return [{"role": m["role"], "content": m["content"]} for m in self.shown()]


class ChatStore:
    """Reads and writes of chats; errors are the catalog's `CatalogError`, in one line."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def recent(self) -> list[dict[str, Any]]:
        """Saved chats, most recently updated first (id, title, model, updated_at)."""
        return self.catalog.recent_chats()

    def open(self, chat_id: str) -> SavedChat:
        row = self.catalog.get(chat_id)
        if self.catalog.table_of(row["id"]) != "chats":
            raise CatalogError(f"'{chat_id}' is not a chat id (chat-…)")
        return SavedChat(row, self.catalog.chat_messages(row["id"]))

    def title_of(self, chat_id: str) -> str:
        return self.catalog.get(chat_id).get("title") or chat_id

    def create(
        self,
        *,
        title: str,
        endpoint: str,
        model: str | None,
        system: str | None,
        condition: str | None,
        settings: dict[str, Any],
    ) -> str:
        return self.catalog.add_chat(
            title=title, endpoint=endpoint, model=model, system=system, condition=condition, settings=settings
        )

    def add_message(self, chat_id: str, role: str, content: str, meta: dict[str, Any] | None = None) -> None:
        self.catalog.add_chat_message(chat_id, role, content, meta)

    def rename(self, chat_id: str, title: str) -> None:
        self.catalog.update("chats", chat_id, title=title)

    def set_model(self, chat_id: str, model: str) -> None:
        self.catalog.update("chats", chat_id, model=model)

    def save_settings(
        self, chat_id: str, *, system: str | None, condition: str | None, settings: dict[str, Any]
    ) -> None:
        self.catalog.update("chats", chat_id, system=system, condition=condition, settings=settings)

    def delete(self, chat_id: str) -> None:
        self.catalog.remove(chat_id)
