"""One command at a time in a run folder: an flock'd OUT/run.lock held for the run's whole life.

An flock belongs to the open file, so the kernel frees it when the last process holding it is
gone: a lock left by a kill -9 is free at once, nothing to clean up by hand. Training ranks
inherit the descriptor, so a folder stays locked until its last rank has exited, and a
`--resume` can never race ranks that outlived their parent. The file holds the owner's pid and
command for the message a second command prints. A run the catalog still calls `running` whose
folder lock is free lost its owner (kill -9, power cut): `settle_abandoned_runs` marks it
`interrupted`.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from openchat_cli.errors import OpenchatError
from openchat_cli.lifeline import identity, same_process_alive

LOCK_FILE = "run.lock"
BUSY_WAIT_S = 3.0  # a `catalog list` probing the lock holds it for milliseconds
DRAIN_WAIT_S = 20.0  # the owner is gone but its ranks still hold the lock: they are exiting


def _holder(fd: int) -> dict[str, Any]:
    try:
        return json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        return {}


def _describe(folder: Path, holder: dict[str, Any]) -> str:
    pid = holder.get("pid", "?")
    what = holder.get("command") or "another openchat command"
    since = f", since {holder['since']}" if holder.get("since") else ""
    return (
        f"run folder {folder} is in use by `{what}` (pid {pid}{since}): wait for it to finish, "
        f"or stop it (kill {pid}) and continue with --resume"
    )


class RunFolderLock:
    """The exclusive lock on one run folder (created if missing); a context manager."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.fd: int | None = None
        self.created_folder = False

    def acquire(self, wait_s: float = BUSY_WAIT_S) -> RunFolderLock:
        """Take the lock or raise OpenchatError naming its holder."""
        self.created_folder = not self.folder.exists()
        try:
            self._lock(wait_s)
        except OSError as exc:
            raise OpenchatError(f"cannot use {self.folder} as a run folder: {exc.strerror or exc}") from None
        return self

    def _lock(self, wait_s: float) -> None:
        deadline = time.monotonic() + wait_s
        while True:
            self.folder.mkdir(parents=True, exist_ok=True)  # again: a refused owner may have removed it
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                # Whom it is waiting for: a live owner (refuse now), an owner gone while its ranks
                # still exit (wait for them), or nobody named yet: a probe, or an owner starting.
                if "identity" not in holder:
                    limit = deadline
                elif same_process_alive(holder["identity"]):
                    limit = 0.0
                else:
                    limit = deadline - wait_s + DRAIN_WAIT_S
                if time.monotonic() > limit:
                    raise OpenchatError(_describe(self.folder, holder)) from None
                time.sleep(0.2)
                continue
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # we locked a file its last owner had just removed: take the new one
        self.fd = fd
        info = {
            "pid": os.getpid(),
            "identity": identity(),
            "since": dt.datetime.now().isoformat(timespec="seconds"),
            "command": "openchat " + " ".join(sys.argv[1:]) if sys.argv else None,
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)

    def release(self) -> None:
        if self.fd is None:
            return
        os.ftruncate(self.fd, 0)  # names no holder once free (ranks may hold it a moment longer)
        if self.created_folder and [p.name for p in self.folder.iterdir()] == [LOCK_FILE]:
            # nothing was made in a folder this command created (it refused its input): leave no trace
            self.path.unlink(missing_ok=True)
            self.folder.rmdir()
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> RunFolderLock:
        return self.acquire() if self.fd is None else self

    def __exit__(self, *exc: object) -> None:
        self.release()


def only_lock_inside(folder: Path) -> bool:
    """Whether a folder holds nothing but (at most) its lock file."""
    return all(p.name == LOCK_FILE for p in Path(folder).iterdir())


def settle_abandoned_runs(catalog: Any) -> list[str]:
    """Mark `interrupted` every `running` run whose folder lock is free (its owner is gone).

    The probe holds a shared lock while it updates, so an owner starting a `--resume` at that
    moment waits for it instead of being marked; the update only changes a row still `running`.
    Returns the ids it marked.
    """
    from store.catalog import now

    marked = []
    rows = catalog.query("select id, output_path from runs where status = 'running' and output_path is not null")
    for row in rows:
        lock_path = Path(row["output_path"]) / LOCK_FILE
        try:
            fd = os.open(lock_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue  # no lock file: a run this version did not start, or a folder that is gone
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its owner is alive
            if catalog.write(
                "update runs set status = 'interrupted', finished_at = ? where id = ? and status = 'running'",
                [now(), row["id"]],
            ):
                marked.append(row["id"])
        finally:
            os.close(fd)
    return marked
