"""The tests never touch the user's real catalog, not even from module-scoped fixtures (which
run before the per-test home is set): a fixture that ran `openchat train` once registered its
runs and checkpoints in ~/.local/share/openchat."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs
import pytest


@pytest.fixture(scope="module")
def home_seen_by_a_module_fixture() -> tuple[str | None, str]:
    from store.home import catalog_path

    return os.environ.get("OPENCHAT_HOME"), str(catalog_path())


def test_a_module_fixture_gets_a_temporary_home(home_seen_by_a_module_fixture, tmp_path_factory):
    home, catalog = home_seen_by_a_module_fixture
    assert home, "OPENCHAT_HOME is unset while module-scoped fixtures run"
    real = Path(platformdirs.user_data_dir("openchat")).resolve()
    assert not Path(catalog).resolve().is_relative_to(real)
    assert Path(home).resolve().is_relative_to(tmp_path_factory.getbasetemp().resolve())


def test_each_test_still_gets_its_own_home(openchat_home, home_seen_by_a_module_fixture):
    assert os.environ["OPENCHAT_HOME"] == str(openchat_home)
    assert str(openchat_home) != home_seen_by_a_module_fixture[0]
