"""Temporary files and folders beside their final name, so outputs appear whole or not at all.

`tempfile` makes them private (0600 / 0700); outputs are meant to be shared like any file the
user writes, so they get the permissions the user's umask gives new files.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temp_file_beside(target: Path, suffix: str = ".tmp") -> tuple[int, str]:
    """(fd, path) of a new temp file in target's folder, with ordinary file permissions."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.fchmod(fd, 0o666 & ~_umask())
    return fd, tmp


def temp_dir_beside(target: Path) -> Path:
    """A new temp folder in target's folder, with ordinary folder permissions."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp
