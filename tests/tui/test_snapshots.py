"""Snapshots of the main screens at 80x24 (pytest-textual-snapshot).

The SVGs live in tests/tui/__snapshots__/; after an intended change to the look, review the
new pictures and refresh them with `pytest tests/tui/test_snapshots.py --snapshot-update`.
"""

from __future__ import annotations

from textual.widgets import Input

from tests.tui import seed
from tests.tui.conftest import DOWN_ENDPOINT, wait_for
from tui.screens.verdicts import QuestionScreen, RunScreen, RunsScreen

SIZE = (80, 24)


async def _ready(pilot) -> None:
    screen = pilot.app.screen
    await wait_for(pilot, lambda: screen.models is not None or screen.last_error is not None)
    await pilot.pause()


async def _send(pilot, text: str) -> None:
    await _ready(pilot)
    screen = pilot.app.screen
    screen.query_one("#prompt", Input).value = text
    await pilot.press("enter")
    await wait_for(
        pilot,
        lambda: not screen.streaming and screen.history[-1]["role"] == "assistant" or screen.last_error is not None,
    )
    await pilot.pause(0.2)


def test_chat_welcome(snap_compare, make_app):
    assert snap_compare(make_app(), terminal_size=SIZE, run_before=_ready)


def test_chat_streamed_reply(snap_compare, make_app, catalog):
    older = catalog.add_chat(title="Recipe ideas for dinner tonight", endpoint=None, model="fake-model")
    catalog.add_chat_message(older, "user", "Ideas?")
    assert snap_compare(make_app(), terminal_size=SIZE, run_before=lambda pilot: _send(pilot, "Show me some code"))


def test_chat_server_down(snap_compare, make_app):
    assert snap_compare(
        make_app(endpoint=DOWN_ENDPOINT), terminal_size=SIZE, run_before=lambda pilot: _send(pilot, "Hello?")
    )


def test_settings_dialog(snap_compare, make_app):
    from tui.screens.settings import ChatSettings

    app = make_app(
        settings=ChatSettings(system="You are a helpful assistant.", condition="GPT4 Correct", temperature=0.7)
    )

    async def run_before(pilot):
        await _ready(pilot)
        await pilot.press("ctrl+o")
        await pilot.pause(0.2)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_help_screen(snap_compare, make_app):
    async def run_before(pilot):
        await _ready(pilot)
        await pilot.press("f1")
        await pilot.pause(0.2)

    assert snap_compare(make_app(), terminal_size=SIZE, run_before=run_before)


def test_verdict_runs(snap_compare, make_app, seeded):
    async def run_before(pilot):
        await wait_for(pilot, lambda: isinstance(pilot.app.screen, RunsScreen))
        await pilot.pause(0.2)

    assert snap_compare(make_app(verdicts=""), terminal_size=SIZE, run_before=run_before)


def test_verdict_run_questions(snap_compare, make_app, seeded):
    async def run_before(pilot):
        await wait_for(pilot, lambda: isinstance(pilot.app.screen, RunScreen))
        await pilot.pause(0.2)

    assert snap_compare(make_app(verdicts=seed.PAIRWISE), terminal_size=SIZE, run_before=run_before)


def test_verdict_question(snap_compare, make_app, seeded):
    async def run_before(pilot):
        await wait_for(pilot, lambda: isinstance(pilot.app.screen, RunScreen))
        await pilot.pause(0.2)
        await pilot.press("down", "enter")
        await wait_for(pilot, lambda: isinstance(pilot.app.screen, QuestionScreen))
        await pilot.pause(0.3)

    assert snap_compare(make_app(verdicts=seed.PAIRWISE), terminal_size=SIZE, run_before=run_before)
