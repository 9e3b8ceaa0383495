"""Fixtures for the TUI tests: a scripted OpenAI server, a temp catalog, a seeded judged run."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from store.catalog import Catalog, open_catalog
from tests.tui.fake_server import FakeServer
from tests.tui.seed import seed_eval_runs

# An address where nothing listens (TCP port 9, "discard", is never served here).
DOWN_ENDPOINT = "http://127.0.0.1:9/v1"
# Shown in the top bar instead of the fake server's random port, so snapshots are stable.
LABEL = "127.0.0.1:18888"


@pytest.fixture(scope="session")
def fake_server():
    server = FakeServer().start()
    yield server
    server.stop()


@pytest.fixture
def catalog(openchat_home: Path):
    cat = open_catalog()
    yield cat
    cat.close()


@pytest.fixture
def seeded(catalog: Catalog) -> dict[str, str]:
    return seed_eval_runs(catalog)


@pytest.fixture
def make_app(catalog: Catalog, fake_server: FakeServer) -> Callable:
    from tui.app import OpenChatApp

    def make(**kwargs) -> OpenChatApp:
        kwargs.setdefault("endpoint", fake_server.base_url)
        kwargs.setdefault("endpoint_label", LABEL)
        kwargs.setdefault("catalog", catalog)
        return OpenChatApp(**kwargs)

    return make


async def wait_for(pilot, condition: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
    """Let the app run until `condition()` holds (a loaded CI machine may take seconds; the
    wait ends as soon as it holds)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.05)
