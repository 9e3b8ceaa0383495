"""The sandbox that runs model-written Python: limits, no network, contained processes, files
kept in its own directory. Each check also runs the same program where the layer under test is
off, so the test fails if the layer stops working."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from openchat_cli.eval.sandbox import Limits, namespaces_available, run_many, run_program

needs_namespaces = pytest.mark.skipif(
    not namespaces_available(), reason="`unshare --net --pid` does not work on this machine"
)


def test_a_plain_program_runs_and_its_output_comes_back():
    result = run_program("import sys\nprint('to stdout')\nprint('to stderr', file=sys.stderr)\n")
    assert result.status == "passed" and result.returncode == 0
    assert result.stdout.strip() == "to stdout" and result.stderr.strip() == "to stderr"


def test_a_failing_program_says_why():
    result = run_program("def f():\n    return 1\nassert f() == 2, 'f is wrong'\n")
    assert result.status == "failed" and result.returncode == 1
    assert result.detail() == "failed: AssertionError: f is wrong"


def test_an_infinite_loop_is_stopped_by_the_cpu_limit():
    start = time.monotonic()
    # 1 s of CPU can take many seconds of wall clock on a loaded machine: the wall limit is far.
    result = run_program("while True:\n    pass\n", Limits(cpu_s=1, wall_s=120))
    assert result.status == "timeout" and "CPU time" in result.detail()
    assert time.monotonic() - start < 60


def test_a_sleeping_program_is_stopped_by_the_wall_clock():
    start = time.monotonic()
    result = run_program("import time\ntime.sleep(60)\n", Limits(wall_s=1))
    assert result.status == "timeout" and result.returncode is None
    assert "wall clock" in result.detail()
    assert time.monotonic() - start < 30  # not the program's 60 s (a loaded machine starts Python slowly)


@pytest.mark.parametrize(
    "hog",
    [
        "x = bytearray(16 * 1024 ** 3)\n",  # one huge allocation
        "x = []\nwhile True:\n    x.append(bytearray(50 * 1024 ** 2))\n",  # growing until stopped
    ],
)
def test_a_memory_hog_is_stopped(hog: str):
    result = run_program(hog, Limits(memory_mb=512))
    assert result.status == "memory", result.stderr
    assert result.detail().startswith("memory limit")


@pytest.fixture
def listener():
    """A real TCP listener on loopback that a sandboxed program must not reach."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    yield server.getsockname()[1]
    server.close()


def _connect_program(port: int) -> str:
    return (
        f"import socket\nsock = socket.socket()\nsock.settimeout(3)\n"
        f"sock.connect(('127.0.0.1', {port}))\nprint('connected')\n"
    )


def test_the_network_probe_connects_when_nothing_stops_it(listener: int):
    """The control: with both layers off the same program does connect."""
    result = run_program(_connect_program(listener), Limits(guard=False, namespaces=False))
    assert result.status == "passed" and "connected" in result.stdout


def test_the_guard_alone_blocks_the_network(listener: int):
    result = run_program(_connect_program(listener), Limits(guard=True, namespaces=False))
    assert result.status == "failed" and "connected" not in result.stdout
    assert "PermissionError: network access is disabled" in result.detail()


@needs_namespaces
def test_the_network_namespace_alone_blocks_the_network(listener: int):
    result = run_program(_connect_program(listener), Limits(guard=False, namespaces=True))
    assert result.status == "failed" and "connected" not in result.stdout
    assert "Errno" in result.detail()  # the kernel refuses: the namespace has no way out


def test_name_lookups_are_blocked():
    result = run_program("import socket\nsocket.getaddrinfo('pypi.org', 443)\n")
    assert result.status == "failed" and "network access is disabled" in result.detail()


def test_a_fork_bomb_is_stopped_at_the_first_fork():
    start = time.monotonic()
    result = run_program("import os\nwhile True:\n    os.fork()\n", Limits(wall_s=60))
    assert result.status == "failed"
    assert "disabled in the sandbox (os.fork)" in result.detail()
    assert time.monotonic() - start < 30  # stopped at once, not by the wall clock


def test_subprocesses_are_blocked():
    result = run_program("import subprocess\nsubprocess.run(['true'])\n")
    assert result.status == "failed" and "subprocess.Popen" in result.detail()


# Without the guard: children that outlive their parent, writing their host pid (/proc is the
# host's, so /proc/self names the host pid even inside a PID namespace) and sleeping forever.
# The parent ends once every child has written its pid (renamed into place whole), however
# long a loaded machine takes to run them.
STRAGGLERS = """
import os, time
for _ in range(5):
    if os.fork() == 0:
        name = os.path.join({out!r}, str(os.getpid()))
        with open(name + '.tmp', 'w') as fh:
            fh.write(os.readlink('/proc/self'))
        os.rename(name + '.tmp', name)
        time.sleep(600)
        os._exit(0)
while len([n for n in os.listdir({out!r}) if not n.endswith('.tmp')]) < 5:
    time.sleep(0.01)
"""


@pytest.mark.parametrize("namespaces", [pytest.param(True, marks=needs_namespaces), False])
def test_processes_a_program_leaves_behind_are_killed(tmp_path: Path, namespaces: bool):
    out = tmp_path / "pids"
    out.mkdir()
    result = run_program(STRAGGLERS.format(out=str(out)), Limits(guard=False, namespaces=namespaces))
    assert result.status == "passed", result.stderr
    pids = [int(p.read_text()) for p in out.iterdir()]
    assert len(pids) == 5
    deadline = time.monotonic() + 30
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in pids if _alive(pid)]
        time.sleep(0.05)
    assert alive == []


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_files_land_in_the_sandbox_directory_only(tmp_path: Path):
    outside = tmp_path / "outside.txt"
    program = (
        "import os, tempfile\n"
        "open('relative.txt', 'w').write('x')\n"
        "fd, name = tempfile.mkstemp(suffix='.tmp')\nos.close(fd)\n"
        "open(os.path.expanduser('~/home.txt'), 'w').write('x')\n"
        "print(os.getcwd())\n"
        f"open({str(outside)!r}, 'w').write('escaped')\n"
    )
    result = run_program(program)
    assert result.status == "failed" and "writing outside the sandbox directory" in result.detail()
    assert not outside.exists()
    assert "relative.txt" in result.files and "home.txt" in result.files
    assert any(f.endswith(".tmp") for f in result.files)
    assert not Path(result.stdout.strip()).exists()  # the directory is gone afterwards


def test_deleting_outside_the_sandbox_is_blocked(tmp_path: Path):
    victim = tmp_path / "keep.txt"
    victim.write_text("keep")
    result = run_program(f"import os\nos.remove({str(victim)!r})\n")
    assert result.status == "failed" and victim.read_text() == "keep"


def test_the_environment_is_scrubbed(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("OPENCHAT_SECRET_FOR_TEST", "s3cret")
    result = run_program("import os, sys\nprint(sorted(os.environ))\nprint(sys.flags.isolated)\n")
    assert "OPENCHAT_SECRET_FOR_TEST" not in result.stdout and "s3cret" not in result.stdout
    names, isolated = result.stdout.strip().splitlines()
    assert set(eval(names)) <= {"PATH", "HOME", "TMPDIR", "LANG", "LC_CTYPE"}
    assert isolated == "1"


def test_output_is_cut_at_the_limit():
    result = run_program("print('a' * 1_000_000)\n", Limits(output_bytes=1000))
    assert result.status == "passed"
    assert result.stdout.startswith("a" * 1000) and "bytes not kept" in result.stdout
    assert len(result.stdout) < 1100


def test_stderr_keeps_its_tail_so_the_error_survives_the_cut():
    program = "import sys\nsys.stderr.write('noise\\n' * 200_000)\nraise ValueError('last words')\n"
    result = run_program(program, Limits(output_bytes=1000))
    assert result.status == "failed" and result.detail() == "failed: ValueError: last words"
    assert result.stderr.startswith("[… ") and len(result.stderr) < 1100


def test_writing_a_huge_file_is_stopped():
    result = run_program(
        "with open('big', 'wb') as fh:\n    fh.write(b'x' * (8 * 1024 ** 2))\n", Limits(file_size_mb=1)
    )
    assert result.status == "failed" and "File too large" in result.detail()


def test_run_many_keeps_order_and_bounds_the_workers():
    program = "import time\nstart = time.time()\ntime.sleep(0.3)\nprint(start, time.time(), {i})\n"
    results = run_many([program.replace("{i}", str(i)) for i in range(6)], workers=2)
    spans = [tuple(float(x) for x in r.stdout.split()[:2]) for r in results]
    assert [int(r.stdout.split()[2]) for r in results] == list(range(6))
    most = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
    assert most <= 2
