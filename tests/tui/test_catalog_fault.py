"""The TUI with a catalog that turns damaged mid-session: it ends with the one line, no traceback."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import pytest

from store.faults import CatalogDamaged

pytestmark = pytest.mark.asyncio


def _point_evals_past_the_end(path) -> None:
    """Another process damages the catalog: the evals table's root page now lies past the end
    of the file (what a bad write to the schema does). Done through SQLite, so the app's
    connection sees it on its next statement."""
    conn = sqlite3.connect(path)
    (version,) = conn.execute("pragma schema_version").fetchone()
    conn.execute("pragma writable_schema = on")
    conn.execute("update sqlite_master set rootpage = 99999 where name = 'evals'")
    conn.execute(f"pragma schema_version = {version + 1}")  # other connections reload the schema
    conn.commit()
    conn.close()


async def test_catalog_damaged_mid_session_ends_the_app_with_its_line(make_app, catalog):
    """Opened healthy, damaged while the chat screen is up; switching to the verdicts browser
    reads the evals table: the app ends with exit code 2 and keeps the error for `openchat chat`
    to print as its one line."""
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        _point_evals_past_the_end(catalog.path)
        app.call_later(app.action_toggle_mode)  # not pilot.press(): it would wait on a closing app
        deadline = time.monotonic() + 60
        while app.catalog_error is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    assert isinstance(app.catalog_error, CatalogDamaged)
    assert str(catalog.path) in str(app.catalog_error)
    assert app.return_code == 2
