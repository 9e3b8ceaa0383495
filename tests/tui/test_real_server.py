"""The chat against our real `openchat serve` with the tiny model (session fixture tiny_server)."""

from __future__ import annotations

import pytest
from textual.widgets import Input

from tests.tui.conftest import wait_for
from tui.screens.chat import ChatScreen
from tui.screens.settings import ChatSettings
from tui.widgets.messages import MessageView

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]


async def test_chat_with_the_real_server(tiny_server, catalog):
    from tui.app import OpenChatApp

    app = OpenChatApp(
        endpoint=tiny_server.base_url,
        catalog=catalog,
        settings=ChatSettings(max_tokens=12, temperature=0.0, condition="GPT4 Correct"),
    )
    async with app.run_test(size=(80, 24)) as pilot:
        screen = pilot.app.screen
        assert isinstance(screen, ChatScreen)
        await wait_for(
            pilot, lambda: screen.models is not None or screen.last_error is not None, timeout=30, what="the model list"
        )
        assert screen.last_error is None, screen.last_error
        assert screen.model == tiny_server.model  # picked from /v1/models
        for turn, text in enumerate(["Hello! What is 12 plus 7?", "And 3 times 4?"], 1):
            screen.query_one("#prompt", Input).value = text
            await pilot.press("enter")
            await wait_for(
                pilot,
                lambda turn=turn: (
                    not screen.streaming
                    and len([v for v in screen.query(MessageView) if v.role == "assistant"]) == turn
                ),
                timeout=60,
                what="the tiny model's reply",
            )
            assert screen.last_error is None, screen.last_error
        replies = [v for v in screen.query(MessageView) if v.role == "assistant"]
        assert all(v.content for v in replies)

    chat = catalog.list("chats")[0]
    messages = catalog.chat_messages(chat["id"])
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    meta = messages[-1]["meta"]
    assert meta["model"] == tiny_server.model
    assert meta["finish_reason"] in ("stop", "length")
    assert meta["usage"]["completion_tokens"] <= 12

    # Reopen the saved chat (as `openchat chat --chat ID` does) and continue it.
    app = OpenChatApp(endpoint=tiny_server.base_url, catalog=catalog, chat_id=chat["id"])
    async with app.run_test(size=(80, 24)) as pilot:
        screen = pilot.app.screen
        await wait_for(pilot, lambda: screen.models is not None, timeout=30)
        assert len(screen.query(MessageView)) == 4
        assert screen.settings.max_tokens == 12  # the chat's settings came back with it
        screen.query_one("#prompt", Input).value = "One more?"
        await pilot.press("enter")
        await wait_for(
            pilot,
            lambda: not screen.streaming and len(screen.query(MessageView)) == 6,
            timeout=60,
            what="the reply in the reopened chat",
        )
    assert len(catalog.chat_messages(chat["id"])) == 6
