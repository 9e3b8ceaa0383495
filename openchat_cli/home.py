"""Where openchat keeps its catalog and default outputs (OPENCHAT_HOME)."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

ENV_VAR = "OPENCHAT_HOME"


def home_dir() -> Path:
    """The home folder: $OPENCHAT_HOME, else the platform's user data dir. Created on demand."""
    value = os.environ.get(ENV_VAR)
    path = Path(value).expanduser() if value else Path(platformdirs.user_data_dir("openchat"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def set_home(path: Path | str | None) -> None:
    """Point this process and its children (DeepSpeed ranks, servers) at another home."""
    if path is not None:
        os.environ[ENV_VAR] = str(Path(path).expanduser().resolve())


def catalog_path() -> Path:
    return home_dir() / "catalog.db"


def default_output_dir(kind: str) -> Path:
    """Default folder for outputs of one kind (datasets, checkpoints, models, evals)."""
    path = home_dir() / kind
    path.mkdir(parents=True, exist_ok=True)
    return path
