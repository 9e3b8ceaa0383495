"""Helper processes that die with the command that started them, however it ended.

A command that starts helpers (training ranks, `openchat serve` under quickstart) hands them its
identity in $OPENCHAT_OWNER (`owner_env()`); a helper calls `follow_owner()` first thing, and a
watcher thread ends it the moment the owner exits: kill -9 of the owner included, which no
handler in the owner could catch. The identity holds the owner's host, pid and kernel start time,
so a recycled pid is never mistaken for the owner; the watcher waits on a pidfd (no polling).
Direct children also get PR_SET_PDEATHSIG, which the kernel delivers even if the watcher
thread cannot run.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import socket
import sys
import threading
import time

OWNER_ENV = "OPENCHAT_OWNER"
PR_SET_PDEATHSIG = 1


def start_ticks(pid: int) -> str | None:
    """The kernel's start time of `pid` (clock ticks since boot), or None if it has exited
    (a zombie waiting to be reaped counts as exited)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            text = fh.read()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return None if fields[0] in ("Z", "X") else fields[19]


def identity(pid: int | None = None) -> str:
    """host/pid/start-time of a process (default: this one)."""
    pid = pid or os.getpid()
    return f"{socket.gethostname()}/{pid}/{start_ticks(pid)}"


def owner_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """`env` (default: this process's) naming this process as the owner of the children started with it."""
    return {**(os.environ if env is None else env), OWNER_ENV: identity()}


def same_process_alive(ident: str) -> bool:
    """Whether the process named by `identity()` still runs (on this host; elsewhere: assume so)."""
    host, pid, ticks = ident.rsplit("/", 2)
    if host != socket.gethostname():
        return True
    return start_ticks(int(pid)) == ticks


def _die_with_parent(sig: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the watcher thread alone
        pass


def _owner_gone(hard: bool, grace_s: float) -> None:
    """Stop this process: SIGKILL (hard), or SIGTERM so it can record how it stopped, then
    SIGKILL if it is still here after `grace_s`."""
    if hard:
        os.kill(os.getpid(), signal.SIGKILL)
    print(f"openchat: the command that started this one (${OWNER_ENV}) is gone; stopping", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(grace_s)
    os.kill(os.getpid(), signal.SIGKILL)


def follow_owner(hard: bool = False, grace_s: float = 60.0) -> bool:
    """End this process when the owner named in $OPENCHAT_OWNER exits (no-op without one).

    hard: SIGKILL at once (training ranks: nothing may be written after the owner is gone);
    otherwise SIGTERM first, so a command can stop cleanly, and SIGKILL after `grace_s`.
    Returns whether an owner is being followed.
    """
    ident = os.environ.get(OWNER_ENV)
    if not ident or ident.count("/") < 2:
        return False
    host, pid_text, ticks = ident.rsplit("/", 2)
    if host != socket.gethostname() or not pid_text.isdigit():
        return False  # a rank on another node: its launcher there owns it
    pid = int(pid_text)
    if pid == os.getppid():
        _die_with_parent(signal.SIGKILL if hard else signal.SIGTERM)
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        fd = None
    except (AttributeError, OSError):  # no pidfd: poll once a second
        fd = -1
    if fd is None or start_ticks(pid) != ticks:  # gone before we looked (or its pid was reused)
        _owner_gone(True, 0)

    def watch() -> None:
        if fd >= 0:
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            while not poller.poll():
                pass
        else:
            while start_ticks(pid) == ticks:
                time.sleep(1.0)
        _owner_gone(hard, grace_s)

    threading.Thread(target=watch, name="openchat-owner-watch", daemon=True).start()
    return True
