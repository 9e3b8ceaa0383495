"""What a failure of catalog.db means for the user, as one line naming the file and what to do.

SQLite and the file system report a damaged, locked or unreachable catalog as bare exceptions
(`file is not a database`, `database is locked`, `unable to open database file`, ENOTDIR …).
Every catalog operation runs inside `translated()`, so each of them surfaces as a
`CatalogError` subclass, which the CLI prints as one red line with exit status 2.
"""

from __future__ import annotations

import math
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BUSY_TIMEOUT_ENV = "OPENCHAT_BUSY_TIMEOUT"
DEFAULT_BUSY_TIMEOUT_S = 30.0

# SQLite primary result codes (sqlite3.h) that mean the file itself is unusable.
_DAMAGED = {"SQLITE_CORRUPT", "SQLITE_NOTADB", "SQLITE_FORMAT"}
_UNREACHABLE = {
    "SQLITE_CANTOPEN",
    "SQLITE_PERM",
    "SQLITE_READONLY",
    "SQLITE_IOERR",
    "SQLITE_FULL",
    "SQLITE_AUTH",
    "SQLITE_NOLFS",
}
_LOCKED = {"SQLITE_BUSY", "SQLITE_LOCKED"}


class CatalogError(Exception):
    """Unknown or ambiguous id, or a row that cannot be written."""


class CatalogDamaged(CatalogError):
    """catalog.db is not a readable SQLite database (text, truncated, garbled, a folder)."""


class CatalogLocked(CatalogError):
    """Another process held the catalog's lock for longer than the busy timeout."""


class CatalogUnreachable(CatalogError):
    """The catalog (or the folder meant to hold it) cannot be created, opened or written."""


def busy_timeout_s() -> float:
    """How long to wait for another process's lock: $OPENCHAT_BUSY_TIMEOUT seconds, else 30."""
    text = os.environ.get(BUSY_TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_BUSY_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (math.isfinite(value) and value >= 0):
        raise CatalogError(f"{BUSY_TIMEOUT_ENV}={text!r} is not a number of seconds (e.g. 30)")
    return value


def _primary(exc: BaseException) -> str:
    """'SQLITE_BUSY' for SQLITE_BUSY_RECOVERY and the like ('' when unknown)."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    return "_".join(name.split("_")[:2])


def is_lock_error(exc: BaseException) -> bool:
    """A lock another connection holds (worth waiting for), not a damaged or missing file."""
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    return _primary(exc) in _LOCKED


def _move_aside(path: Path) -> str:
    aside = path.parent / "damaged"
    return (
        f"move it aside with its -wal/-shm files (`mkdir {aside} && mv {path}* {aside}/`); the "
        f"next command starts an empty catalog (`openchat catalog path` prints where it is)"
    )


def damaged(path: Path, why: str) -> CatalogDamaged:
    return CatalogDamaged(f"catalog {path} is damaged ({why}): {_move_aside(path)}")


def foreign(path: Path, tables: list[str]) -> CatalogDamaged:
    shown = ", ".join(tables[:4]) + (", …" if len(tables) > 4 else "")
    return CatalogDamaged(
        f"catalog {path} is another program's SQLite database (tables {shown}), "
        f"not an openchat catalog: {_move_aside(path)}"
    )


def locked(path: Path, timeout_s: float) -> CatalogLocked:
    return CatalogLocked(
        f"catalog {path} is locked by another process (held longer than {timeout_s:g}s): let it "
        f"finish or stop it (`fuser {path}` names it) and run the command again; "
        f"{BUSY_TIMEOUT_ENV} sets the wait in seconds"
    )


def unreachable(path: Path, why: str) -> CatalogUnreachable:
    return CatalogUnreachable(
        f"cannot use catalog {path} ({why}): check that its folder exists, is writable and its "
        f"disk has room, or pick another home with --home or OPENCHAT_HOME"
    )


def explain(path: Path, exc: BaseException, timeout_s: float) -> CatalogError | None:
    """The user-facing error for a SQLite failure on the catalog at `path`, or None when it is
    not about the file (a constraint violated, a bug in a query): those propagate as they are."""
    if not isinstance(exc, sqlite3.DatabaseError) or isinstance(exc, sqlite3.IntegrityError):
        return None
    if is_lock_error(exc):
        return locked(path, timeout_s)
    primary, text = _primary(exc), str(exc)
    if path.is_dir():
        return damaged(path, "it is a folder, not a database file")
    if primary in _DAMAGED:
        return damaged(path, text)
    if primary in _UNREACHABLE:
        return unreachable(path, text)
    return None


@contextmanager
def translated(path: Path, timeout_s: float) -> Iterator[None]:
    """Re-raise a SQLite failure of the catalog file as the CatalogError that explains it."""
    try:
        yield
    except sqlite3.Error as exc:
        error = explain(path, exc, timeout_s)
        if error is None:
            raise
        raise error from exc
