"""Helpers started with `owner_env()` die with their owner, however it ends (kill -9 included),
and a run folder is held by one command at a time. Real processes, real signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from openchat_cli.lifeline import start_ticks

ROOT = Path(__file__).resolve().parents[2]
# The owner starts a helper (which follows it) and a grandchild through a plain shell, then waits.
# Each follower prints its pid once it watches (they share the owner's stdout: one write() per line,
# or two followers' lines can interleave, as print's text and newline once did).
OWNER = textwrap.dedent("""
    import subprocess, sys, time
    from openchat_cli.lifeline import owner_env
    follower = (
        "from openchat_cli.lifeline import follow_owner; import os, time; follow_owner(hard=%s); "
        "os.write(1, (str(os.getpid()) + chr(10)).encode()); time.sleep(600)"
    )
    a = subprocess.Popen([sys.executable, "-c", follower % "False"], env=owner_env())
    b = subprocess.Popen([sys.executable, "-c", follower % "True"], env=owner_env())
    c = subprocess.Popen(["sh", "-c", "%s -c '%s'; sleep 600" % (sys.executable, follower % "True")], env=owner_env())
    print(a.pid, b.pid, c.pid, flush=True)
    time.sleep(600)
""")


def _gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(start_ticks(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if start_ticks(p)]


def _python_children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                found.append(int(entry))
    return found


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_followers_die_with_their_owner(how):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER], env=env, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        # The owner's line names its three children; each follower's line says it is watching.
        lines = [owner.stdout.readline().split() for _ in range(4)]
        (followers,) = [[int(p) for p in line] for line in lines if len(line) == 3]
        watching = sorted(int(line[0]) for line in lines if len(line) == 1)
        shell = followers[2]
        grandchild = [p for p in _python_children(shell)]
        assert len(grandchild) == 1  # the follower started by the shell, not by the owner
        assert watching == sorted(followers[:2] + grandchild)
        os.kill(owner.pid, how)
        owner.wait()
        assert _gone(followers[:2] + grandchild, timeout=30) == []
    finally:
        try:
            os.killpg(owner.pid, signal.SIGKILL)  # the shell and its sleep, and anything a failure left
        except ProcessLookupError:
            pass


def test_a_held_run_folder_is_refused_with_its_holder(cli, tmp_path, openchat_home):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from openchat_cli.run_folder import RunFolderLock; "
            "RunFolderLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(600)",
            str(tmp_path / "run"),
        ],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        err = cli("train", "--model", tmp_path, "--data", tmp_path, "--out", tmp_path / "run", expect=2).stderr
        assert "is in use by" in err and f"pid {holder.pid}" in err
        holder.kill()  # kill -9: the kernel frees the lock, nothing to clean up
        holder.wait()
        err = cli("train", "--model", tmp_path / "none", "--data", tmp_path, "--out", tmp_path / "run", expect=2).stderr
        assert "in use" not in err and "is not a folder" in err  # past the lock, on to the inputs
    finally:
        holder.kill()
