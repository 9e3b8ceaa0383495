"""Run untrusted Python (model-written code) in a fresh, limited subprocess, never in ours.

Each program gets its own `python -I` process in its own temporary directory, which is deleted
afterwards. Two layers keep it in:

- the kernel: rlimits (CPU seconds, address space, file size, open files, processes, no core
  file), a new session whose whole process group is killed at the wall-clock limit, and, where
  `unshare` works (root, or unprivileged user namespaces), fresh network and PID namespaces: no
  interface but a downed loopback, and every process the program starts dies with it;
- a Python audit hook installed before the program runs (`GUARD`): no sockets that connect,
  bind or resolve names, no new processes or signals, no `ctypes`, and no writes, renames or
  deletions outside the temporary directory. It is what stops a fork bomb when we run as root
  (RLIMIT_NPROC does not bind root) and what blocks the network where namespaces are missing.

The environment is scrubbed (PATH, HOME and TMPDIR only; -I ignores PYTHON* variables and the
user site), stdout and stderr are read through pipes and cut at `Limits.output_bytes` (stdout
keeps its head, stderr its tail, where the traceback ends).
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

PROGRAM_FILE = "program.py"
MEMORY_ERROR_MARK = "MemoryError"
TRIMMED_MARK = "[… "  # starts the note that replaces output beyond Limits.output_bytes

# Runs the program in the child: the rlimits (set here, not in a preexec_fn, which is unsafe
# while other threads run), a SIGXCPU handler that says why it stops (a plain signal death
# would be garbled by `unshare`), the guard, then the program's own code as `__main__`.
RUNNER = r"""
import os, resource, signal, sys
for _which, _soft, _hard in {rlimits!r}:
    _which = getattr(resource, _which)
    _max = resource.getrlimit(_which)[1]  # an unprivileged process cannot raise its hard limit
    if _max != resource.RLIM_INFINITY:
        _soft, _hard = min(_soft, _max), min(_hard, _max)
    resource.setrlimit(_which, (_soft, _hard))
def _cpu_spent(signum, frame):
    os.write(2, b"\nCPU time limit exceeded\n")
    os._exit({cpu_exit})
signal.signal(signal.SIGXCPU, _cpu_spent)
{guard}
with open({program!r}, encoding="utf-8") as _f:
    _code = compile(_f.read(), {program!r}, "exec")
exec(_code, {{"__name__": "__main__", "__file__": {program!r}, "__builtins__": __builtins__}})
"""
CPU_EXIT = 152  # 128 + SIGXCPU, as a shell would report it

# Installed before the program runs: an audit hook (it cannot be removed once added)
# that turns the events below into PermissionError. `{root}` is the sandbox directory.
GUARD = r"""
import os, sys
_ROOT = os.path.realpath({root!r})
_NETWORK = {{"socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg",
             "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr",
             "socket.getnameinfo"}}
_PROCESSES = {{"os.fork", "os.forkpty", "os.system", "os.posix_spawn", "os.exec", "os.spawn",
               "subprocess.Popen", "os.kill", "os.killpg", "signal.pthread_kill", "pty.spawn"}}
_NATIVE = {{"ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata"}}
_PATHS = {{"os.remove": (0,), "os.rmdir": (0,), "os.rename": (0, 1), "os.link": (0, 1),
           "os.symlink": (1,), "os.truncate": (0,), "os.chmod": (0,), "os.chown": (0,),
           "os.mkdir": (0,), "os.utime": (0,), "shutil.rmtree": (0,), "os.chflags": (0,)}}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC

def _inside(path):
    if isinstance(path, int):
        return True  # a descriptor: it was opened through a checked path
    try:
        real = os.path.realpath(os.fsdecode(path))
    except (TypeError, ValueError):
        return False
    return real == _ROOT or real.startswith(_ROOT + os.sep)

def _guard(event, args):
    if event in _NETWORK:
        raise PermissionError(f"network access is disabled in the sandbox ({{event}})")
    if event in _PROCESSES:
        raise PermissionError(f"starting processes or sending signals is disabled in the sandbox ({{event}})")
    if event in _NATIVE:
        raise PermissionError(f"native code (ctypes) is disabled in the sandbox ({{event}})")
    if event == "open":
        path, mode, flags = args
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & _WRITE_FLAGS)
        if writing and path is not None and not _inside(path):
            raise PermissionError(f"writing outside the sandbox directory is disabled: {{path}}")
    elif event in _PATHS:
        for i in _PATHS[event]:
            if i < len(args) and args[i] is not None and not _inside(args[i]):
                raise PermissionError(f"changing files outside the sandbox directory is disabled "
                                      f"({{event}} {{args[i]}})")

sys.addaudithook(_guard)
del _guard
"""


@dataclass(frozen=True)
class Limits:
    """What one program may use. Defaults suit HumanEval-sized tests on a small machine."""

    wall_s: float = 10.0  # wall clock, then the whole process group is killed
    cpu_s: int = 10  # RLIMIT_CPU
    memory_mb: int = 1024  # RLIMIT_AS (address space)
    file_size_mb: int = 16  # RLIMIT_FSIZE
    open_files: int = 64  # RLIMIT_NOFILE
    processes: int = 32  # RLIMIT_NPROC (per user; root is exempt, the guard covers that)
    output_bytes: int = 64 * 1024  # kept of stdout (its head) and of stderr (its tail) each
    guard: bool = True  # the audit hook (turn off only to test the kernel layer alone)
    namespaces: bool | None = None  # None: use them where `unshare` works


@dataclass
class RunResult:
    """How a program ended. `status`: passed (exit 0), failed, timeout or memory."""

    status: str
    returncode: int | None
    stdout: str
    stderr: str
    wall_s: float
    isolation: str  # "namespaces+guard", "namespaces", "guard" or "rlimits"
    files: list[str] = field(default_factory=list)  # what it left in its directory

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def detail(self) -> str:
        """One line saying why it did not pass (or "passed")."""
        if self.status == "passed":
            return "passed"
        if self.status == "timeout":
            if self.returncode is None:
                return f"timed out after {self.wall_s:.1f}s (wall clock)"
            return "timed out: CPU time limit exceeded"
        lines = [
            line for line in self.stderr.strip().splitlines() if line.strip() and not line.startswith(TRIMMED_MARK)
        ]
        last = lines[-1].strip() if lines else ""
        if self.status == "memory":
            return f"memory limit: {last or 'killed'}"
        if last:
            return f"failed: {last[:300]}"
        if self.returncode is not None and self.returncode < 0:
            try:
                name = signal.Signals(-self.returncode).name
            except ValueError:
                name = str(-self.returncode)
            return f"failed: killed by {name}"
        return f"failed: exit status {self.returncode}"


@functools.lru_cache(maxsize=1)
def namespaces_available() -> bool:
    """Whether `unshare` can give a child its own network and PID namespaces here."""
    tool = shutil.which("unshare")
    if tool is None or not sys.platform.startswith("linux"):
        return False
    try:
        done = subprocess.run(
            [*_unshare_prefix(tool), "true"], capture_output=True, timeout=10, env={"PATH": "/usr/bin:/bin"}
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _unshare_prefix(tool: str) -> list[str]:
    user = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    return [tool, *user, "--net", "--pid", "--fork", "--kill-child"]


def _rlimits(limits: Limits) -> list[tuple[str, int, int]]:
    """(resource name, soft, hard) for the child. CPU: SIGXCPU at the limit, SIGKILL 1s later."""
    mb = 1024 * 1024
    return [
        ("RLIMIT_CPU", limits.cpu_s, limits.cpu_s + 1),
        ("RLIMIT_AS", limits.memory_mb * mb, limits.memory_mb * mb),
        ("RLIMIT_FSIZE", limits.file_size_mb * mb, limits.file_size_mb * mb),
        ("RLIMIT_NOFILE", limits.open_files, limits.open_files),
        ("RLIMIT_NPROC", limits.processes, limits.processes),
        ("RLIMIT_CORE", 0, 0),
    ]


class _BoundedReader(threading.Thread):
    """Drain a pipe to its end, keeping `limit` bytes of it: the head (stdout: what the program
    said first) or the tail (stderr: where the traceback ends). The rest is only counted."""

    def __init__(self, stream, limit: int, keep_tail: bool = False):
        super().__init__(daemon=True)
        self.stream = stream
        self.limit = limit
        self.keep_tail = keep_tail
        self.kept = bytearray()
        self.dropped = 0

    def run(self) -> None:
        while True:
            chunk = self.stream.read1(65536)
            if not chunk:
                break
            self.kept += chunk
            extra = len(self.kept) - self.limit
            if extra > 0:
                self.dropped += extra
                if self.keep_tail:
                    del self.kept[:extra]
                else:
                    del self.kept[self.limit :]

    def text(self) -> str:
        text = self.kept.decode("utf-8", errors="replace")
        if not self.dropped:
            return text
        note = f"{TRIMMED_MARK}{self.dropped} bytes not kept]"
        return f"{note}\n{text}" if self.keep_tail else f"{text}\n{note}"


def _status(returncode: int | None, stderr: str) -> str:
    """passed / failed / timeout (wall clock, or CPU time: SIGXCPU) / memory (MemoryError)."""
    if returncode is None or returncode in (CPU_EXIT, -signal.SIGXCPU):
        return "timeout"
    if returncode == 0:
        return "passed"
    lines = [line for line in stderr.strip().splitlines() if not line.startswith(TRIMMED_MARK)]
    if lines and MEMORY_ERROR_MARK in lines[-1]:
        return "memory"
    return "failed"


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_program(source: str, limits: Limits = Limits()) -> RunResult:
    """Run `source` as a script in a sandboxed `python -I` subprocess and report how it ended."""
    use_ns = namespaces_available() if limits.namespaces is None else limits.namespaces
    isolation = "+".join(part for part, on in (("namespaces", use_ns), ("guard", limits.guard)) if on) or "rlimits"
    workdir = tempfile.mkdtemp(prefix="openchat-sandbox-")
    try:
        program = os.path.join(workdir, PROGRAM_FILE)
        with open(program, "w", encoding="utf-8") as fh:
            fh.write(source)
        guard = GUARD.format(root=workdir) if limits.guard else ""
        runner = RUNNER.format(rlimits=_rlimits(limits), cpu_exit=CPU_EXIT, guard=guard, program=program)
        command = [sys.executable, "-I", "-B", "-c", runner]
        if use_ns:
            command = [*_unshare_prefix(shutil.which("unshare") or "unshare"), *command]
        env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8"}
        start = time.monotonic()
        process = subprocess.Popen(
            command,
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            close_fds=True,
        )
        readers = [
            _BoundedReader(process.stdout, limits.output_bytes),
            _BoundedReader(process.stderr, limits.output_bytes, keep_tail=True),
        ]
        for reader in readers:
            reader.start()
        timed_out = False
        try:
            process.wait(timeout=limits.wall_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        # Whatever it started goes too (the PID namespace already took it where there is one).
        _kill_group(process)
        process.wait()
        for reader in readers:
            reader.join(timeout=5)
        wall = time.monotonic() - start
        stdout, stderr = readers[0].text(), readers[1].text()
        returncode = None if timed_out else process.returncode
        status = _status(returncode, stderr)
        files = sorted(os.path.relpath(os.path.join(d, f), workdir) for d, _, names in os.walk(workdir) for f in names)
        files = [f for f in files if f != PROGRAM_FILE]
        return RunResult(status, returncode, stdout, stderr, round(wall, 3), isolation, files)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def default_workers() -> int:
    """One program per CPU core (programs are single-threaded and mostly CPU-bound)."""
    return max(1, os.cpu_count() or 1)


def run_many(sources: Sequence[str], limits: Limits = Limits(), workers: int | None = None) -> list[RunResult]:
    """Run many programs, at most `workers` at a time; results in the order of `sources`."""
    if not sources:
        return []
    count = max(1, min(workers or default_workers(), len(sources)))
    with ThreadPoolExecutor(max_workers=count, thread_name_prefix="sandbox") as pool:
        return list(pool.map(lambda source: run_program(source, limits), sources))
