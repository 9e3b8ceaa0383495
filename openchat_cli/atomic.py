"""Temporary files and folders beside their final name, so outputs appear whole or not at all.

`tempfile` makes them private (0600 / 0700); outputs are meant to be shared like any file the
user writes, so they get the permissions the user's umask gives new files.

A temp file's name says who writes it: `.OUT.<tag>.<random>.tmp`, where the tag holds the
writer's host, pid and process start time. A writer killed with -9 cannot remove its temp file;
the next run for the same output removes it (`remove_stale_temps`), but only when the tag proves
the writer is gone: same host, and no process with that pid, or one started at another time.
"""

from __future__ import annotations

import os
import re
import socket
import tempfile
from pathlib import Path

# oc-<host>-<pid>-<start time in clock ticks since boot>
_TAG = re.compile(r"^oc-(?P<host>[A-Za-z0-9_-]+)-(?P<pid>\d+)-(?P<start>\d+)$")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _host() -> str:
    """This machine's name, reduced to characters that are safe in a file name and the tag."""
    return re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())[:40] or "host"


def _start_time(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot, from /proc), or None if there is no
    such process or no /proc to ask."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22; the command name (field 2) is in parentheses and may hold spaces.
    return int(stat[stat.rindex(")") + 2 :].split()[19])


def writer_tag(pid: int | None = None) -> str:
    """The tag naming this process (or `pid`) as the writer of a temp file."""
    pid = os.getpid() if pid is None else pid
    return f"oc-{_host()}-{pid}-{_start_time(pid) or 0}"


def writer_is_gone(tag: str) -> bool:
    """True only when the process named by `tag` provably no longer runs: it ran on this host and
    its pid is free or now belongs to a process started at another time. Anything unclear (another
    host, no /proc, an unparsable tag) counts as alive."""
    m = _TAG.match(tag)
    if m is None or m["host"] != _host():
        return False
    pid, start = int(m["pid"]), int(m["start"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # exists, owned by someone else
    if start == 0 or not Path("/proc/self/stat").exists():
        return False
    now = _start_time(pid)
    return now is not None and now != start


def temp_file_beside(target: Path, suffix: str = ".tmp") -> tuple[int, str]:
    """(fd, path) of a new temp file in target's folder, with ordinary file permissions."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{writer_tag()}.", suffix=suffix, dir=target.parent)
    os.fchmod(fd, 0o666 & ~_umask())
    return fd, tmp


def stale_temps(target: Path, suffix: str = ".tmp") -> list[Path]:
    """Temp files of `target` (made by `temp_file_beside`) whose writer is provably gone."""
    target = Path(target)
    prefix = f".{target.name}."
    found: list[Path] = []
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return found
    for entry in entries:
        name = entry.name
        if not (name.startswith(prefix) and name.endswith(suffix)):
            continue
        # .OUT.<tag>.<random><suffix>: the tag is the first dot-separated part after the prefix,
        # so temp files of another output whose name starts with OUT + "." never match a tag.
        rest = name[len(prefix) : -len(suffix)]
        tag, dot, _random = rest.partition(".")
        if dot and _TAG.match(tag) and entry.is_file(follow_symlinks=False) and writer_is_gone(tag):
            found.append(Path(entry.path))
    return found


def remove_stale_temps(target: Path, suffix: str = ".tmp") -> list[Path]:
    """Remove the temp files a killed writer left for `target`; returns what was removed."""
    removed = []
    for path in stale_temps(target, suffix):
        try:
            path.unlink()
        except FileNotFoundError:
            continue  # another run removed it first
        removed.append(path)
    return removed


def temp_dir_beside(target: Path) -> Path:
    """A new temp folder in target's folder, with ordinary folder permissions."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


def atomic_write_text(path: Path | str, text: str) -> None:
    """Write `text` to a temp file beside `path`, then rename it over `path`: readers see the old
    file or the whole new one, never a half-written one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file_beside(path)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
