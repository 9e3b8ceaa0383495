"""The chat screen: the chat list on the left, the conversation, an input line, the footer.

The screen ties three parts together: the chat list (tui/widgets/chat_list.py) posts what the
user picks, the conversation (tui/widgets/conversation.py) shows and streams messages, and
the chat store (tui/chat_store.py) saves them in the catalog. It owns the server client, the
dialogs and the reply worker. Esc cancels that worker: the partial reply stays on screen and
is saved with `stopped: true`.
"""

from __future__ import annotations

import re
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.reactive import reactive
from textual.screen import Screen
from textual.widgets import Input, Static
from textual.worker import Worker

from store.catalog import CatalogError
from tui.chat_store import ChatStore
from tui.client import ChatError, ReplyInfo, classify
from tui.screens.dialogs import ConfirmScreen, ModelPicker, RenameScreen
from tui.screens.settings import ChatSettings, SettingsScreen
from tui.widgets.chat_list import ChatList
from tui.widgets.conversation import Conversation, ReplyOutcome, note_for
from tui.widgets.keybar import KeyBar


def make_title(text: str, width: int = 40) -> str:
    """A chat title from its first message: first line, spaces collapsed, cut at `width`."""
    line = re.sub(r"\s+", " ", text.strip().splitlines()[0] if text.strip() else "").strip()
    line = line or "New chat"
    return line if len(line) <= width else line[: width - 1].rstrip() + "…"


class ChatScreen(Screen):
    BINDINGS = [
        Binding("ctrl+n", "new_chat", "New"),
        Binding("ctrl+o", "settings", "Settings"),
        Binding("ctrl+l", "pick_model", "Model"),
        Binding("ctrl+y", "copy_last", "Copy"),
        Binding("ctrl+t", "app.toggle_mode", "Verdicts"),
        Binding("escape", "stop", "Stop"),
        Binding("ctrl+r", "retry", "Retry"),
        Binding("f2", "rename", "Rename", show=False),
        Binding("f8", "delete", "Delete", show=False),
        Binding("ctrl+b", "toggle_sidebar", "Chats", show=False),
        Binding("pageup", "scroll_messages(-1)", "Scroll up", show=False),
        Binding("pagedown", "scroll_messages(1)", "Scroll down", show=False),
    ]

    streaming: reactive[bool] = reactive(False)

    def __init__(self) -> None:
        super().__init__()
        self.chat_id: str | None = None
        self.chat_title: str | None = None
        self.history: list[dict[str, str]] = []
        self.models: list[str] | None = None
        self.last_error: ChatError | None = None
        self.reply_worker: Worker | None = None
        self.settings = ChatSettings()
        self.model: str | None = None

    # -- layout ------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Static(id="topbar", markup=False)
        with Horizontal(id="body"):
            yield ChatList(id="sidebar")
            with Vertical(id="main"):
                yield Conversation(id="messages")
                yield Static(id="status", markup=False)
                yield Input(placeholder="Message… (enter sends · F1 help)", id="prompt")
        yield KeyBar()

    async def on_mount(self) -> None:
        prompt = self.query_one("#prompt", Input)
        if self.app.is_headless:
            prompt.cursor_blink = False
        self.settings = ChatSettings(**self.app.default_settings.as_dict())
        self.model = self.app.model
        self.refresh_chat_list()
        if self.app.initial_chat_id:
            await self.open_chat(self.app.initial_chat_id)
        self.update_topbar()
        prompt.focus()
        self.load_models()

    @property
    def store(self) -> ChatStore:
        return ChatStore(self.app.catalog)

    @property
    def conversation(self) -> Conversation:
        return self.query_one("#messages", Conversation)

    @property
    def client(self):
        return self.app.client

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "stop":
            return self.streaming
        if action == "retry":
            return self.can_retry()
        return True

    def sync_bindings(self) -> None:
        """Refresh the key bar only when what it shows changes."""
        state = (self.streaming, self.can_retry())
        if state != getattr(self, "_binding_state", None):
            self._binding_state = state
            self.refresh_bindings()

    def watch_streaming(self, streaming: bool) -> None:
        self.sync_bindings()
        self.query_one("#prompt", Input).placeholder = (
            "Replying… (esc stops)" if streaming else "Message… (enter sends · F1 help)"
        )

    # -- status lines --------------------------------------------------------------------------
    def update_topbar(self) -> None:
        parts = [f"● {self.model or 'no model'}", self.app.endpoint_label]
        described = self.settings.describe()
        if described:
            parts.append(described)
        self.query_one("#topbar", Static).update("  ".join(parts))

    def set_status(self, text: str, cls: str | None = None) -> None:
        status = self.query_one("#status", Static)
        status.update(text)
        status.set_classes(cls or "")

    # -- chat list -------------------------------------------------------------------------------
    def refresh_chat_list(self) -> None:
        self.query_one(ChatList).show(self.store.recent(), self.chat_id)

    @on(ChatList.Open)
    async def chat_selected(self, event: ChatList.Open) -> None:
        if event.chat_id != self.chat_id:
            await self.open_chat(event.chat_id)
        self.query_one("#prompt", Input).focus()

    @on(ChatList.Rename)
    def rename_requested(self, event: ChatList.Rename) -> None:
        self.rename_chat(event.chat_id)

    @on(ChatList.Delete)
    def delete_requested(self, event: ChatList.Delete) -> None:
        self.delete_chat(event.chat_id)

    async def open_chat(self, chat_id: str) -> None:
        """Show a saved chat and continue it (settings and model come back with it)."""
        if self.streaming:
            self.notify("A reply is streaming: press esc to stop it first.", severity="warning")
            return
        try:
            chat = self.store.open(chat_id)
        except CatalogError as exc:
            self.notify(str(exc), severity="error")
            return
        row = chat.row
        self.chat_id = chat.id
        self.chat_title = chat.title
        self.settings = ChatSettings.from_chat(row, self.app.default_settings)
        if row.get("model") and row["model"] != self.model:
            if self.models is None or row["model"] in self.models:
                self.model = row["model"]
            else:
                self.notify(
                    f"This chat was with {row['model']}, which the server does not list; continuing with {self.model}.",
                    severity="warning",
                )
        self.history = chat.history()
        self.last_error = None
        await self.conversation.show_messages(chat.shown(), row.get("model"))
        self.refresh_chat_list()
        self.update_topbar()
        self.set_status(f"{self.chat_title} · {len(self.history)} messages · {self.chat_id}")
        self.sync_bindings()

    # -- sending ---------------------------------------------------------------------------------
    @on(Input.Submitted, "#prompt")
    async def send(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        if not text:
            return
        if self.streaming:
            self.notify("Wait for the reply, or press esc to stop it.", severity="warning")
            return
        event.input.clear()
        try:
            self.ensure_chat(text)
        except CatalogError as exc:
            self.notify(f"Could not save the chat: {exc}", severity="error")
        self.save_message("user", text)
        self.history.append({"role": "user", "content": text})
        await self.conversation.add_user(text)
        self.start_reply()

    def start_reply(self) -> None:
        self.streaming = True
        self.reply_worker = self.reply()

    def request_messages(self) -> list[dict[str, str]]:
        system = [{"role": "system", "content": self.settings.system}] if self.settings.system else []
        return system + [dict(m) for m in self.history]

    @work(exclusive=True, group="reply", exit_on_error=False)
    async def reply(self) -> None:
        try:
            await self._reply()
        except Exception as exc:  # noqa: BLE001 - shown in the UI, never a traceback
            self.streaming = False
            try:
                await self.show_error(classify(exc, self.client.endpoint, self.model))
            except Exception:  # noqa: BLE001 - the screen is going away
                pass

    async def _reply(self) -> None:
        await self.clear_errors()
        self.last_error = None
        try:
            if self.model is None:
                await self.fetch_models()
            if self.model is None:
                raise ChatError(
                    "not_found",
                    f"The server at {self.client.endpoint} serves no model.",
                    "Start `openchat serve MODEL` there, then press ctrl+r.",
                )
        except ChatError as exc:
            self.streaming = False
            await self.show_error(exc)
            return
        info = ReplyInfo()
        self.set_status(f"{self.model} is replying… esc stops", "-busy")
        fragments = self.client.stream_chat(
            model=self.model,
            messages=self.request_messages(),
            temperature=self.settings.temperature,
            max_tokens=self.settings.max_tokens,
            condition=self.settings.condition,
            info=info,
        )
        try:
            outcome = await self.conversation.stream_reply(self.model, fragments)
        finally:
            self.streaming = False
        await self.finish_reply(outcome, info)

    @on(Conversation.ReplyEnded)
    def reply_ended(self, event: Conversation.ReplyEnded) -> None:
        self.sync_bindings()

    async def finish_reply(self, outcome: ReplyOutcome, info: ReplyInfo) -> None:
        """Save the reply (first: this also runs when the app quits mid-reply), then say how
        it ended."""
        view, text, stopped, error = outcome.view, outcome.text, outcome.stopped, outcome.error
        meta: dict[str, Any] = info.meta()
        if stopped:
            meta["stopped"] = True
        if error:
            meta["error"] = error.message
        if text:
            self.history.append({"role": "assistant", "content": text})
            self.save_message("assistant", text, meta)
        if not text:
            await view.remove()
            if error:
                await self.show_error(error)
            elif stopped:
                self.set_status("Stopped before the first token. ctrl+r asks again.", "-warn")
            else:
                self.set_status("The model returned an empty reply. ctrl+r asks again.", "-warn")
            self.sync_bindings()
            return
        view.set_note(note_for(meta), "-stopped" if stopped else "-broken" if error else None)
        if error:
            await self.show_error(error)
            return
        tokens = (info.usage or {}).get("completion_tokens")
        bits = [
            self.model or "",
            "stopped by you" if stopped else ("cut at max tokens" if info.finish_reason == "length" else "done"),
        ]
        if tokens:
            bits.append(f"{tokens} tokens")
        self.set_status(" · ".join(b for b in bits if b), "-warn" if stopped else None)
        self.sync_bindings()

    async def show_error(self, error: ChatError) -> None:
        self.last_error = error
        await self.conversation.show_error(error)
        self.set_status(error.message, "-error")
        self.sync_bindings()
        if error.kind == "not_found":
            self.models = None  # list again on the next try

    async def clear_errors(self) -> None:
        await self.conversation.clear_errors()

    # -- persistence -----------------------------------------------------------------------------
    def ensure_chat(self, first_message: str) -> None:
        if self.chat_id is not None:
            return
        self.chat_title = make_title(first_message)
        self.chat_id = self.store.create(
            title=self.chat_title,
            endpoint=self.client.endpoint,
            model=self.model,
            system=self.settings.system,
            condition=self.settings.condition,
            settings=self.settings.generation(),
        )
        self.refresh_chat_list()

    def save_message(self, role: str, content: str, meta: dict | None = None) -> None:
        if self.chat_id is None:
            return
        try:
            self.store.add_message(self.chat_id, role, content, meta)
        except CatalogError as exc:
            self.notify(f"Could not save the message: {exc}", severity="error")
            return
        self.refresh_chat_list()

    # -- models ----------------------------------------------------------------------------------
    async def fetch_models(self) -> list[str]:
        models = await self.client.models()
        self.models = models
        if models and (self.model is None):
            self.model = models[0]
        self.update_topbar()
        return models

    @work(exclusive=True, group="models", exit_on_error=False)
    async def load_models(self) -> None:
        self.set_status(f"Connecting to {self.app.endpoint_label}…")
        try:
            models = await self.fetch_models()
        except ChatError as exc:
            self.last_error = exc
            self.set_status(f"{exc.message} {exc.hint}", "-error")
            self.sync_bindings()
            return
        if self.last_error is not None and self.last_error.kind in ("unreachable", "timeout"):
            self.last_error = None
        if not models:
            self.set_status("The server lists no models.", "-warn")
        elif self.model not in models:
            self.set_status(
                f"'{self.model}' is not listed by the server (it has: {', '.join(models[:4])}). ctrl+l picks one.",
                "-warn",
            )
        else:
            where = f"{self.chat_title} · " if self.chat_title else ""
            self.set_status(f"{where}connected · {len(models)} model{'s' if len(models) != 1 else ''} served")
        self.sync_bindings()

    @work(exclusive=True, group="models", exit_on_error=False)
    async def action_pick_model(self) -> None:
        try:
            models = await self.fetch_models()
        except ChatError as exc:
            self.set_status(f"{exc.message} {exc.hint}", "-error")
            return
        if not models:
            self.notify("The server lists no models.", severity="warning")
            return
        choice = await self.app.push_screen_wait(ModelPicker(models, self.model))
        if choice and choice != self.model:
            self.model = choice
            if self.chat_id:
                self.store.set_model(self.chat_id, choice)
            self.update_topbar()
            self.set_status(f"Now talking to {choice}.")

    # -- actions ---------------------------------------------------------------------------------
    def can_retry(self) -> bool:
        if self.streaming:
            return False
        if self.last_error is not None:
            return True
        return bool(self.history) and self.history[-1]["role"] == "user"

    async def action_retry(self) -> None:
        if not self.can_retry():
            return
        if self.history and self.history[-1]["role"] == "user":
            self.start_reply()
        else:
            await self.clear_errors()
            self.last_error = None
            self.load_models()

    def action_stop(self) -> None:
        if self.reply_worker is not None and self.streaming:
            self.reply_worker.cancel()

    async def action_new_chat(self) -> None:
        if self.streaming:
            self.notify("A reply is streaming: press esc to stop it first.", severity="warning")
            return
        self.chat_id = None
        self.chat_title = None
        self.history = []
        self.last_error = None
        self.settings = ChatSettings(**self.app.default_settings.as_dict())
        await self.conversation.show_welcome()
        self.query_one(ChatList).clear_highlight()
        self.update_topbar()
        self.set_status("New chat: it is saved when you send the first message.")
        self.query_one("#prompt", Input).focus()
        self.sync_bindings()

    def action_copy_last(self) -> None:
        reply = self.conversation.last_reply()
        if reply is None:
            self.notify("No reply to copy yet.", severity="warning")
            return
        reply.action_copy()

    def action_scroll_messages(self, direction: int) -> None:
        """Page through the conversation without leaving the input (scrolling up stops the
        view from following a streaming reply; scrolling back to the end resumes it)."""
        self.conversation.page(direction)

    def action_toggle_sidebar(self) -> None:
        sidebar = self.query_one("#sidebar")
        sidebar.display = not sidebar.display

    @work(exclusive=True, group="dialog")
    async def action_settings(self) -> None:
        result = await self.app.push_screen_wait(SettingsScreen(self.settings))
        if result is None:
            return
        self.settings = result
        if self.chat_id:
            self.store.save_settings(
                self.chat_id, system=result.system, condition=result.condition, settings=result.generation()
            )
        self.update_topbar()
        self.set_status("Settings saved; they apply from the next message.")

    def action_rename(self) -> None:
        self.rename_chat(self.chat_id)

    def action_delete(self) -> None:
        self.delete_chat(self.chat_id)

    @work(exclusive=True, group="dialog")
    async def rename_chat(self, chat_id: str | None) -> None:
        if chat_id is None:
            self.notify("This chat is not saved yet: send a message first.", severity="warning")
            return
        title = await self.app.push_screen_wait(RenameScreen(self.store.title_of(chat_id)))
        if not title:
            return
        self.store.rename(chat_id, title)
        if chat_id == self.chat_id:
            self.chat_title = title
        self.refresh_chat_list()
        self.set_status(f"Renamed to “{title}”.")

    @work(exclusive=True, group="dialog")
    async def delete_chat(self, chat_id: str | None) -> None:
        if chat_id is None:
            self.notify("This chat is not saved yet; nothing to delete.", severity="warning")
            return
        title = self.store.title_of(chat_id)
        if not await self.app.push_screen_wait(ConfirmScreen(f"Delete the chat “{title}” and its messages?")):
            return
        if chat_id == self.chat_id:
            if self.streaming:
                self.notify("A reply is streaming: press esc to stop it first.", severity="warning")
                return
            await self.action_new_chat()
        self.store.delete(chat_id)
        self.refresh_chat_list()
        self.set_status(f"Deleted “{title}”.")
