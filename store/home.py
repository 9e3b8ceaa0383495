"""Where the catalog lives: the openchat home ($OPENCHAT_HOME, else the platform's data folder).

The store owns this because `open_catalog()` needs it; the CLI adds its default output folders
on top (openchat_cli/home.py)."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

from store.faults import CatalogError

ENV_VAR = "OPENCHAT_HOME"


def home_dir() -> Path:
    """The home folder: $OPENCHAT_HOME, else the platform's user data dir. Created on demand."""
    value = os.environ.get(ENV_VAR)
    path = Path(value).expanduser() if value else Path(platformdirs.user_data_dir("openchat"))
    make_folder(path, "openchat home")
    return path


def make_folder(path: Path, what: str) -> None:
    """Create `path`; a failure is one line naming it and what to do, not a traceback."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        why = "a file is in its place" if path.is_file() else exc.strerror or str(exc)
        raise CatalogError(
            f"cannot create the {what} {path} ({why}): pick a writable folder with --home or {ENV_VAR}"
        ) from None


def catalog_path() -> Path:
    """catalog.db in the home folder."""
    return home_dir() / "catalog.db"
