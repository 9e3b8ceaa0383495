"""The chat screen, driven with Textual's Pilot against the scripted OpenAI server."""

from __future__ import annotations

import pytest
from textual.containers import VerticalScroll
from textual.widgets import Input, OptionList

from tests.fake_openai import free_port as _free_port
from tests.tui.conftest import DOWN_ENDPOINT, wait_for
from tests.tui.fake_server import REPLY, FakeServer
from tui.screens.chat import ChatScreen, make_title
from tui.screens.settings import ChatSettings
from tui.widgets.messages import ErrorView, MessageView

pytestmark = pytest.mark.asyncio


def chat_screen(app) -> ChatScreen:
    screen = app.screen
    assert isinstance(screen, ChatScreen), screen
    return screen


async def ready(pilot) -> ChatScreen:
    """Wait until the model list came back (or failed)."""
    screen = chat_screen(pilot.app)
    await wait_for(pilot, lambda: screen.models is not None or screen.last_error is not None, what="the model list")
    return screen


async def send(pilot, text: str, wait: bool = True) -> ChatScreen:
    screen = chat_screen(pilot.app)
    screen.query_one("#prompt", Input).value = text
    await pilot.press("enter")
    if wait:
        await wait_for(pilot, lambda: not screen.streaming, what="the reply")
        await pilot.pause()
    return screen


def replies(screen) -> list[MessageView]:
    return [v for v in screen.query(MessageView) if v.role == "assistant"]


async def test_send_message_and_see_streamed_reply(make_app, fake_server, catalog):
    settings = ChatSettings(system="Be brief.", condition="GPT4 Correct", temperature=0.3, max_tokens=50)
    app = make_app(settings=settings)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await ready(pilot)
        assert screen.model == "fake-model"
        await send(pilot, "Hello there")
        view = replies(screen)[-1]
        assert view.content == REPLY
        # Rendered as Markdown: the code block became a fence widget.
        assert view.query("MarkdownFence")
        assert "done" in str(screen.query_one("#status").render())
        assert pilot.app.screen.query_one("#prompt", Input).value == ""

    request = fake_server.requests[-1]
    assert request["stream"] is True
    assert request["condition"] == "GPT4 Correct"  # OpenChat's condition, sent in extra_body
    assert request["temperature"] == 0.3 and request["max_tokens"] == 50
    assert request["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello there"},
    ]
    chats = catalog.list("chats")
    assert len(chats) == 1
    chat = chats[0]
    assert chat["title"] == "Hello there" and chat["condition"] == "GPT4 Correct"
    assert chat["settings"] == {"temperature": 0.3, "max_tokens": 50}
    messages = catalog.chat_messages(chat["id"])
    assert [(m["role"], m["content"]) for m in messages] == [("user", "Hello there"), ("assistant", REPLY)]
    assert messages[1]["meta"]["finish_reason"] == "stop"
    assert messages[1]["meta"]["model"] == "fake-model"


async def test_multi_turn_and_reopen_saved_chat(make_app, fake_server, catalog):
    chat_id = catalog.add_chat(
        title="Earlier chat",
        endpoint=fake_server.base_url,
        model="fake-model",
        system="You are terse.",
        settings={"temperature": 0.0, "max_tokens": 64},
    )
    catalog.add_chat_message(chat_id, "user", "First question")
    catalog.add_chat_message(chat_id, "assistant", "First answer", {"model": "fake-model"})
    other = catalog.add_chat(title="Another chat", endpoint=None, model="fake-model")
    catalog.add_chat_message(other, "user", "Something else")

    app = make_app(chat_id=chat_id)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await ready(pilot)
        assert screen.chat_id == chat_id
        assert [v.content for v in screen.query(MessageView)] == ["First question", "First answer"]
        assert screen.settings.system == "You are terse."
        await send(pilot, "Second question")
        request = fake_server.requests[-1]
        assert request["messages"] == [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "First question"},
            {"role": "assistant", "content": "First answer"},
            {"role": "user", "content": "Second question"},
        ]
        assert request["temperature"] == 0.0 and request["max_tokens"] == 64
        # Open the other chat from the sidebar.
        chats = screen.query_one("#chats", OptionList)
        index = next(i for i in range(chats.option_count) if chats.get_option_at_index(i).id == other)
        chats.focus()
        chats.highlighted = index
        await pilot.press("enter")
        await wait_for(pilot, lambda: screen.chat_id == other, what="the other chat")
        assert [v.content for v in screen.query(MessageView)] == ["Something else"]
        # The last message is an unanswered user message: ctrl+r asks for the reply.
        assert screen.can_retry()
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: len(replies(screen)) == 1 and not screen.streaming)

    assert len(catalog.chat_messages(chat_id)) == 4
    assert [m["role"] for m in catalog.chat_messages(other)] == ["user", "assistant"]


async def test_stop_mid_stream_keeps_partial_reply(make_app, fake_server, catalog):
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await ready(pilot)
        before = fake_server.disconnects
        await send(pilot, "Tell me something SLOW", wait=False)
        await wait_for(
            pilot, lambda: replies(screen) and replies(screen)[-1].content.count("word") >= 3, what="a few words"
        )
        assert screen.streaming  # the reply shows while it streams
        assert screen.check_action("stop", ()) is True  # "esc Stop" is in the footer now
        await pilot.press("escape")
        await wait_for(pilot, lambda: not screen.streaming, what="the stop")
        await pilot.pause()
        view = replies(screen)[-1]
        assert view.content.startswith("word0 ") and "word399" not in view.content
        assert view.border_subtitle == "stopped"
        assert "stopped" in str(screen.query_one("#status").render())
        # The server saw the client go away.
        await wait_for(pilot, lambda: fake_server.disconnects > before, what="the disconnect")
        partial = view.content
        # The chat goes on after a stop.
        await send(pilot, "And now?")
        assert replies(screen)[-1].content == REPLY
        assert fake_server.requests[-1]["messages"][-2] == {"role": "assistant", "content": partial}

    chat = catalog.list("chats")[0]
    messages = catalog.chat_messages(chat["id"])
    assert messages[1]["role"] == "assistant" and messages[1]["content"] == partial
    assert messages[1]["meta"]["stopped"] is True
    assert "stopped" not in messages[3]["meta"]


async def test_server_down_then_retry(make_app, catalog):
    port = _free_port()
    app = make_app(endpoint=f"http://127.0.0.1:{port}/v1")
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await ready(pilot)
        assert screen.last_error is not None and screen.last_error.kind == "unreachable"
        assert "Cannot reach the server" in str(screen.query_one("#status").render())
        await send(pilot, "Anyone there?")
        errors = list(screen.query(ErrorView))
        assert len(errors) == 1 and errors[0].kind == "unreachable"
        assert "Is `openchat serve` running" in str(errors[0].render())
        assert screen.check_action("retry", ()) is True
        # The user message is kept; once the server is up, ctrl+r gets the reply.
        server = FakeServer(port).start()
        try:
            await pilot.press("ctrl+r")
            await wait_for(pilot, lambda: replies(screen) and not screen.streaming, what="retried reply")
            assert replies(screen)[-1].content == REPLY
            assert not screen.query(ErrorView)
        finally:
            server.stop()
    messages = catalog.chat_messages(catalog.list("chats")[0]["id"])
    assert [m["role"] for m in messages] == ["user", "assistant"]


@pytest.mark.parametrize(
    "kwargs, text, kind, words",
    [
        ({"api_key": "bad-key"}, "hello", "auth", "401"),
        ({"model": "gone-model"}, "hello", "not_found", "404"),
        ({}, "TOO_LONG " * 20, "context", "maximum context length"),
    ],
)
async def test_http_errors_are_shown_not_raised(make_app, kwargs, text, kind, words):
    app = make_app(**kwargs)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await ready(pilot)
        await send(pilot, text)
        errors = list(screen.query(ErrorView))
        assert [e.kind for e in errors] == [kind]
        assert words in str(errors[0].render())
        assert not replies(screen)
        assert pilot.app.is_running


async def test_view_follows_reply_unless_scrolled_up(make_app):
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await ready(pilot)
        container = screen.query_one("#messages", VerticalScroll)
        await send(pilot, "Write LONG text")
        await pilot.pause(0.2)
        assert container.max_scroll_y > 0
        assert container.scroll_y == container.max_scroll_y  # followed to the end

        await send(pilot, "More LONG text please", wait=False)
        await wait_for(pilot, lambda: replies(screen)[-1].content.count("line") >= 5)
        await pilot.press("pageup", "pageup")
        held = container.scroll_y
        await wait_for(pilot, lambda: not screen.streaming)
        await pilot.pause(0.2)
        assert container.scroll_y == held < container.max_scroll_y  # stayed where the user was


async def test_copy_message(make_app):
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await ready(pilot)
        await send(pilot, "Hi")
        await pilot.press("ctrl+y")
        assert pilot.app.clipboard == REPLY
        # Focus the user's message and copy it with c.
        screen.query(MessageView).first().focus()
        await pilot.press("c")
        assert pilot.app.clipboard == "Hi"


async def test_new_rename_delete_chat(make_app, catalog):
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await ready(pilot)
        await send(pilot, "A chat about the weather in spring and summer and autumn")
        first = screen.chat_id
        assert catalog.get(first)["title"] == make_title("A chat about the weather in spring and summer and autumn")
        await pilot.press("f2")
        await pilot.pause()
        dialog_input = pilot.app.screen.query_one("#title", Input)
        dialog_input.value = "Weather"
        await pilot.press("enter")
        await wait_for(pilot, lambda: catalog.get(first)["title"] == "Weather", what="rename")
        chats = screen.query_one("#chats", OptionList)
        assert chats.get_option_at_index(0).prompt == "Weather"

        await pilot.press("ctrl+n")
        await pilot.pause()
        assert screen.chat_id is None and not screen.query(MessageView)
        await send(pilot, "Second chat")
        assert screen.chat_id != first and len(catalog.list("chats")) == 2

        await pilot.press("f8")
        await pilot.pause()
        await pilot.press("y")
        await wait_for(pilot, lambda: len(catalog.list("chats")) == 1, what="delete")
        assert screen.chat_id is None
        assert chats.option_count == 1 and catalog.list("chats")[0]["id"] == first
        assert catalog.chat_messages(first)


async def test_settings_screen_applies_and_saves(make_app, fake_server, catalog):
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await ready(pilot)
        await send(pilot, "Hi")
        await pilot.press("ctrl+o")
        await pilot.pause()
        dialog = pilot.app.screen
        dialog.query_one("#system").text = "Answer in French."
        dialog.query_one("#condition", Input).value = "Math Correct"
        dialog.query_one("#temperature", Input).value = "5"  # out of range: refused
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert pilot.app.screen is dialog
        dialog.query_one("#temperature", Input).value = "0.7"
        dialog.query_one("#max_tokens", Input).value = "99"
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert pilot.app.screen is screen
        await send(pilot, "Again")
        request = fake_server.requests[-1]
        assert request["messages"][0] == {"role": "system", "content": "Answer in French."}
        assert request["condition"] == "Math Correct"
        assert request["temperature"] == 0.7 and request["max_tokens"] == 99
        assert "cond Math Correct" in str(screen.query_one("#topbar").render())
    chat = catalog.get(catalog.list("chats")[0]["id"])
    assert chat["system"] == "Answer in French." and chat["condition"] == "Math Correct"
    assert chat["settings"] == {"temperature": 0.7, "max_tokens": 99}


async def test_model_picker_and_help(make_app, fake_server):
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await ready(pilot)
        await pilot.press("ctrl+l")
        await wait_for(pilot, lambda: pilot.app.screen is not screen, what="the picker")
        picker = pilot.app.screen.query_one(OptionList)
        assert [picker.get_option_at_index(i).id for i in range(picker.option_count)] == ["fake-model", "other-model"]
        await pilot.press("down", "enter")
        await wait_for(pilot, lambda: screen.model == "other-model", what="the model switch")
        await send(pilot, "Hi")
        assert fake_server.requests[-1]["model"] == "other-model"
        assert replies(screen)[-1].border_title == "other-model"

        await pilot.press("f1")
        await pilot.pause()
        assert type(pilot.app.screen).__name__ == "HelpScreen"
        await pilot.press("escape")
        await pilot.pause()
        assert pilot.app.screen is screen


async def test_server_down_at_start_does_not_crash(make_app):
    app = make_app(endpoint=DOWN_ENDPOINT)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await ready(pilot)
        assert screen.model is None
        await send(pilot, "hello?")
        assert [e.kind for e in screen.query(ErrorView)] == ["unreachable"]
        assert pilot.app.is_running
