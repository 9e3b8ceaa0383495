"""Text from users, models and files is shown literally, wherever the TUI shows it.

Each hostile string goes through every surface: chat titles (sidebar, status, rename and
delete dialogs), messages and their model labels, error blocks, notifications, the settings
(top bar and dialog), the model picker, and the verdicts browser (run table, filters, answer
columns, judge explanations). The app must stay up and show each string as written.
"""

from __future__ import annotations

import io

import pytest
from rich.console import Console
from textual.widgets import DataTable, Input, OptionList

from tests.tui import seed
from tests.tui.conftest import wait_for
from tui.screens.chat import ChatScreen
from tui.screens.dialogs import ConfirmScreen, ModelPicker, RenameScreen
from tui.screens.settings import ChatSettings, SettingsScreen
from tui.screens.verdicts import QuestionScreen, RunScreen
from tui.widgets.messages import ErrorView, MessageView

pytestmark = pytest.mark.asyncio

ISSUE_TITLE = "[/INST] what does [[A]] mean? [bold]"
HOSTILE = [
    ISSUE_TITLE,
    "[/x]",
    "[b]",
    "[[A]]",
    "ends with a backslash \\",
    "[@click=app.quit]quit[/]",
    "\x1b[31mred via ANSI\x1b[0m",
    "RTL مرحبا بالعالم שלום",
    "emoji 👩‍💻🎉 [🎉]",
    "[" + "x" * 10_000 + "]",
]


def screen_text(app) -> str:
    """What the terminal shows, as plain text (rendered the way `export_screenshot` does)."""
    console = Console(
        width=app.size.width,
        height=app.size.height,
        file=io.StringIO(),
        force_terminal=True,
        color_system="truecolor",
        record=True,
    )
    console.print(app.screen._compositor.render_update(full=True))
    return console.export_text()


def seed_chat(catalog, title: str, model: str, reply: str) -> str:
    chat_id = catalog.add_chat(
        title=title, endpoint=None, model=model, system=title, condition=title, settings={"temperature": 0.5}
    )
    catalog.add_chat_message(chat_id, "user", title)
    catalog.add_chat_message(chat_id, "assistant", reply, {"model": model, "stopped": True})
    return chat_id


async def test_issue_title_sent_then_every_later_start(make_app, catalog):
    """The issue's report: the first message becomes a title with brackets; the app shows it,
    and so does each later start (the title is saved)."""
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        screen = app.screen
        assert isinstance(screen, ChatScreen)
        await wait_for(pilot, lambda: screen.models is not None, what="the model list")
        screen.query_one("#prompt", Input).value = ISSUE_TITLE
        await pilot.press("enter")
        await wait_for(
            pilot, lambda: not screen.streaming and screen.history[-1]["role"] == "assistant", what="the reply"
        )
        await pilot.pause()
        shown = screen_text(app)
        assert "[/INST] what does [[A]] mean?" in shown
        assert app.is_running
    (chat,) = catalog.recent_chats()
    assert chat["title"] == ISSUE_TITLE
    for kwargs in ({}, {"chat_id": chat["id"]}):  # a plain start, and reopening that chat
        app = make_app(**kwargs)
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause(0.2)
            assert app.is_running
            # The sidebar is narrow: the title ends in an ellipsis there, brackets and all.
            assert "[/INST] what does [[" in screen_text(app)


@pytest.mark.parametrize("text", HOSTILE, ids=range(len(HOSTILE)))
async def test_chat_surfaces_show_text_literally(make_app, catalog, text):
    chat_id = seed_chat(catalog, text, model=text, reply=f"{text}\n\n```\n{text}\n```")
    app = make_app(chat_id=chat_id)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.screen
        assert isinstance(screen, ChatScreen)
        await wait_for(pilot, lambda: screen.models is not None, what="the model list")
        await pilot.pause()
        # Opened again now that the model list is known: the saved model is not served, and
        # the notification saying so quotes it.
        screen.model = "fake-model"
        await screen.open_chat(chat_id)
        await pilot.pause()
        assert any(text in n.message for n in app._notifications)
        views = list(screen.query(MessageView))
        assert [v.content for v in views][0] == text
        sidebar = screen.query_one("#chats", OptionList)
        assert str(sidebar.get_option_at_index(0).prompt) == text
        if len(text) < 60 and "\x1b" not in text:
            shown = screen_text(app)
            assert text.split()[0] in shown

        # An error naming the model (the server has no such model).
        screen.model = text
        screen.query_one("#prompt", Input).value = "hello"
        await pilot.press("enter")
        await wait_for(pilot, lambda: bool(screen.query(ErrorView)), what="the error block")
        assert text in str(screen.query(ErrorView).last().render())

        # Dialogs: rename, delete, settings and the model picker show the text as written.
        for dialog in (
            RenameScreen(text),
            ConfirmScreen(f"Delete the chat “{text}”?"),
            SettingsScreen(ChatSettings(system=text, condition=text)),
            ModelPicker(["fake-model", text], text),
        ):
            app.push_screen(dialog)
            await pilot.pause()
            assert app.screen is dialog
            app.pop_screen()
            await pilot.pause()
        assert app.is_running
        catalog.update("chats", chat_id, title=text + " renamed")
        screen.refresh_chat_list()
        await pilot.pause()
        assert app.is_running


@pytest.mark.parametrize("text", HOSTILE, ids=range(len(HOSTILE)))
async def test_verdict_surfaces_show_text_literally(make_app, catalog, seeded, text):
    catalog.write("update evals set model = ?, name = ?", [text, text])
    catalog.write("update answers set model = ?", [text])
    catalog.write("update questions set category = ?", [text])
    catalog.write("update judgments set raw = ?, judge_model = ?", [text, text])
    app = make_app(verdicts=seed.PAIRWISE)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen), what="the run screen")
        table = app.screen.query_one("#questions", DataTable)
        await wait_for(pilot, lambda: table.row_count > 0, what="the rows")
        assert text in {str(c) for c in table.get_row_at(0)}
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, QuestionScreen), what="a question")
        await pilot.pause()
        assert app.is_running
        if len(text) < 60 and "\x1b" not in text:
            assert text.split()[0] in screen_text(app)
        await pilot.press("escape", "escape")
        await pilot.pause()
        assert app.is_running
