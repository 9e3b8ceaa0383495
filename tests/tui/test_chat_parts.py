"""The chat screen's parts on their own: the chat store, the chat list's keys and messages, and
a streamed reply's batching (text shows up even when the model pauses)."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.app import App
from textual.widgets import Input

import tui
from store.catalog import CatalogError
from tests.tui import seed
from tests.tui.conftest import wait_for
from tui.chat_store import ChatStore
from tui.markdown_text import LineBreaks, with_line_breaks
from tui.screens.chat import ChatScreen
from tui.screens.dialogs import ConfirmScreen, RenameScreen
from tui.widgets.flush_markdown import FlushMarkdown
from tui.widgets.messages import FLUSH_S, MessageView


def test_chat_store_round_trip(catalog, seeded):
    store = ChatStore(catalog)
    chat_id = store.create(
        title="t", endpoint="http://x/v1", model="m", system="sys", condition=None, settings={"temperature": 0.2}
    )
    store.add_message(chat_id, "system", "not shown")
    store.add_message(chat_id, "user", "hi")
    store.add_message(chat_id, "assistant", "hello", {"model": "m", "stopped": True})
    store.rename(chat_id, "renamed")
    store.set_model(chat_id, "m2")
    chat = store.open(chat_id[:9])
    assert chat.id == chat_id and chat.title == "renamed" and chat.row["model"] == "m2"
    assert chat.history() == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert chat.shown()[1]["meta"] == {"model": "m", "stopped": True}
    assert [r["id"] for r in store.recent()] == [chat_id]
    with pytest.raises(CatalogError, match="not a chat id"):
        store.open(seed.PAIRWISE)
    store.delete(chat_id)
    assert store.recent() == []


def test_line_breaks_are_the_same_streamed_or_whole():
    text = "a poem\nin lines\n\n```\ncode\nstays\n```\n" + "x" * 10_000 + "\nend  \nlast"
    breaks = LineBreaks()
    assert "".join(breaks.feed(ch) for ch in text) == with_line_breaks(text)
    assert with_line_breaks("one\ntwo") == "one  \ntwo"


@pytest.mark.asyncio
async def test_chat_list_keys_open_rename_delete(make_app, catalog):
    store = ChatStore(catalog)
    older = store.create(title="older", endpoint=None, model="fake-model", system=None, condition=None, settings={})
    store.add_message(older, "user", "the older chat")
    newer = store.create(title="newer", endpoint=None, model="fake-model", system=None, condition=None, settings={})
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        screen = app.screen
        assert isinstance(screen, ChatScreen)
        chats = screen.query_one("#chats")
        chats.focus()
        chats.highlighted = [o.id for o in chats.options].index(older)
        await pilot.press("enter")  # ChatList.Open -> the screen opens it
        await wait_for(pilot, lambda: screen.chat_id == older, what="the chat to open")
        assert [v.content for v in screen.query(MessageView)] == ["the older chat"]

        chats.focus()
        chats.highlighted = [o.id for o in chats.options].index(newer)
        await pilot.press("r")  # ChatList.Rename
        await wait_for(pilot, lambda: isinstance(app.screen, RenameScreen), what="the dialog")
        app.screen.query_one("#title", Input).value = "renamed"
        await pilot.press("enter")
        await wait_for(pilot, lambda: catalog.get(newer)["title"] == "renamed", what="rename")

        chats.focus()
        chats.highlighted = [o.id for o in chats.options].index(newer)
        await pilot.press("d")  # ChatList.Delete
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the dialog")
        await pilot.press("y")
        await wait_for(pilot, lambda: [r["id"] for r in store.recent()] == [older], what="delete")
        assert screen.chat_id == older and chats.option_count == 1


class OneMessage(App):
    def compose(self):
        yield MessageView("assistant", "", label="m")


@pytest.mark.asyncio
async def test_a_paused_stream_still_shows_its_last_fragments():
    """Fragments are batched; one that arrives right after a batch is shown within FLUSH_S
    even when no other fragment follows (a model that pauses mid-reply)."""
    app = OneMessage()
    async with app.run_test() as pilot:
        view = app.query_one(MessageView)
        await view.start_stream()
        await view.write("first ")
        await view.write("second")  # within FLUSH_S of the first: held back for now
        await pilot.pause(FLUSH_S * 4)
        await wait_for(pilot, lambda: view.markdown.source == "first second", what="the batch")
        await view.end_stream()
        assert view.content == "first second"


class OneMarkdown(App):
    CSS_PATH = str(Path(tui.__file__).parent / "openchat.tcss")  # the chat app's stylesheet

    def compose(self):
        yield FlushMarkdown("first paragraph\n\nsecond paragraph")


@pytest.mark.asyncio
async def test_only_the_last_block_loses_its_bottom_margin():
    app = OneMarkdown()
    async with app.run_test() as pilot:
        markdown = app.query_one(FlushMarkdown)
        await pilot.pause()
        first, second = markdown.children
        assert first.styles.margin.bottom == 1 and second.styles.margin.bottom == 0
        await markdown.append("\n\nthird paragraph")
        await pilot.pause()
        assert [b.styles.margin.bottom for b in markdown.children] == [1, 1, 0]
        # Nothing in the app restyles its siblings on each mount (what made streaming slow).
        assert not [w for w in app.screen.walk_children() if w._has_order_style]
