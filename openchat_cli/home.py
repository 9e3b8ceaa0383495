"""Where openchat keeps its catalog and default outputs (OPENCHAT_HOME)."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

from openchat_cli.errors import OpenchatError

ENV_VAR = "OPENCHAT_HOME"


def home_dir() -> Path:
    """The home folder: $OPENCHAT_HOME, else the platform's user data dir. Created on demand."""
    value = os.environ.get(ENV_VAR)
    path = Path(value).expanduser() if value else Path(platformdirs.user_data_dir("openchat"))
    _make_folder(path, "openchat home")
    return path


def _make_folder(path: Path, what: str) -> None:
    """Create `path`; a failure is one line naming it and what to do, not a traceback."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        why = "a file is in its place" if path.is_file() else exc.strerror or str(exc)
        raise OpenchatError(f"cannot create the {what} {path} ({why}): pick a "
                            f"writable folder with --home or {ENV_VAR}") from None


def set_home(path: Path | str | None) -> None:
    """Point this process and its children (DeepSpeed ranks, servers) at another home."""
    if path is not None:
        os.environ[ENV_VAR] = str(Path(path).expanduser().resolve())


def catalog_path() -> Path:
    return home_dir() / "catalog.db"


def default_output_dir(kind: str) -> Path:
    """Default folder for outputs of one kind (datasets, checkpoints, models, evals)."""
    path = home_dir() / kind
    _make_folder(path, f"{kind} folder in the openchat home")
    return path
