"""Where openchat keeps its catalog and default outputs (OPENCHAT_HOME).

The home folder itself is the store's (store/home.py: the catalog lives there); this module
adds what only the commands need: pointing child processes at a home, and output folders."""

from __future__ import annotations

import os
from pathlib import Path

from store.home import ENV_VAR, catalog_path, home_dir, make_folder

__all__ = ["ENV_VAR", "catalog_path", "default_output_dir", "home_dir", "set_home"]


def set_home(path: Path | str | None) -> None:
    """Point this process and its children (DeepSpeed ranks, servers) at another home."""
    if path is not None:
        os.environ[ENV_VAR] = str(Path(path).expanduser().resolve())


def default_output_dir(kind: str) -> Path:
    """Default folder for outputs of one kind (datasets, checkpoints, models, evals)."""
    path = home_dir() / kind
    make_folder(path, f"{kind} folder in the openchat home")
    return path
