"""A damaged, locked or unreachable catalog.db: one line naming the file and what to do, exit 2.

Damaged files are real SQLite files broken the ways users break them (text in its place, cut
short, a garbled page, a garbled header, a folder in its place); a held lock is a real second
process holding `BEGIN EXCLUSIVE`.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from store.catalog import Catalog, open_catalog
from store.faults import CatalogDamaged, CatalogLocked

ROOT = Path(__file__).resolve().parents[2]
HOLD_S = 60  # how long a lock holder sleeps; tests kill it long before


def _filled(path: Path, rows: int = 300) -> None:
    """A healthy catalog with enough rows to span many pages."""
    cat = Catalog(path)
    for i in range(rows):
        cat.add_dataset(name=f"d{i}", path=f"/tmp/d{i}", format="conversations", meta={"pad": "x" * 200})
    cat.close()


def _garble_page(path: Path, table: str) -> None:
    """Overwrite the b-tree page header of `table`'s root page (what a bad sector does)."""
    conn = sqlite3.connect(path)
    (root,) = conn.execute("select rootpage from sqlite_master where name = ?", [table]).fetchone()
    (page_size,) = conn.execute("pragma page_size").fetchone()
    conn.close()
    with open(path, "r+b") as fh:
        fh.seek(page_size * (root - 1))
        fh.write(b"\xff" * 16)


def _text(path: Path) -> None:
    path.write_text("these are my notes, not a database\n" * 40)


def _truncated(path: Path) -> None:
    _filled(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def _garbled_page(path: Path) -> None:
    _filled(path)
    _garble_page(path, "datasets")


def _garbled_header(path: Path) -> None:
    _filled(path)
    with open(path, "r+b") as fh:
        fh.write(b"not sqlite at all")


def _foreign(path: Path) -> None:
    """Another program's SQLite database where the catalog should be."""
    conn = sqlite3.connect(path)
    conn.execute("create table datasets (a, b)")
    conn.execute("insert into datasets values (1, 2)")
    conn.commit()
    conn.close()


def _folder(path: Path) -> None:
    path.mkdir()
    (path / "something").write_text("x")


DAMAGES: dict[str, Callable[[Path], None]] = {
    "text": _text,
    "truncated": _truncated,
    "garbled-page": _garbled_page,
    "garbled-header": _garbled_header,
    "folder": _folder,
    "foreign": _foreign,
}


def _one_line_naming(result, path: Path, *words: str) -> str:
    """The command failed with exit 2 and one line on stderr naming `path`; no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(path) in lines[0] and all(w in lines[0] for w in words), lines[0]
    return lines[0]


def _run(args: list[str], home: Path, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    """The real `openchat` in its own process."""
    full_env = {**os.environ, "OPENCHAT_HOME": str(home), "PYTHONPATH": str(ROOT), **env}
    return subprocess.run(
        [sys.executable, "-m", "openchat_cli.app", *args],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class Holder:
    """A second process holding an exclusive lock on a SQLite file until killed."""

    def __init__(self, path: Path, *, locking_mode_exclusive: bool = False):
        code = (
            "import sqlite3, sys, time\n"
            f"conn = sqlite3.connect({str(path)!r}, isolation_level=None)\n"
            + ("conn.execute('pragma locking_mode = exclusive')\n" if locking_mode_exclusive else "")
            + "conn.execute('begin exclusive')\n"
            "conn.execute('create table if not exists held (x)')\n"
            "print('held', flush=True)\n"
            f"time.sleep({HOLD_S})\n"
        )
        self.process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        assert self.process.stdout.readline().strip() == "held"

    def release(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)


@pytest.fixture
def holders():
    started: list[Holder] = []

    def hold(path: Path, **kw) -> Holder:
        started.append(Holder(path, **kw))
        return started[-1]

    yield hold
    for holder in started:
        if holder.process.poll() is None:
            holder.release()


# -- damaged ------------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damaged_catalog_is_one_line_for_catalog_commands(cli, openchat_home, damage):
    path = openchat_home / "catalog.db"
    DAMAGES[damage](path)
    before = path.read_bytes() if path.is_file() else None
    for args in (
        ["catalog", "list"],
        ["catalog", "show", "ds-1234"],
        ["catalog", "lineage", "ds-1234"],
        ["catalog", "rm", "ds-1234"],
    ):
        line = _one_line_naming(cli(*args, expect=None), path, "move it aside")
        assert "openchat catalog path" in line
        assert ("damaged" if damage != "foreign" else "not an openchat catalog") in line
    if before is not None:
        assert path.read_bytes() == before  # reported, never "repaired" or overwritten


@pytest.mark.parametrize("damage", ["text", "garbled-page"])
def test_damaged_catalog_is_one_line_for_stage_commands(cli, openchat_home, tmp_path, damage):
    """Commands of other stages open the catalog too, and say the same."""
    path = openchat_home / "catalog.db"
    DAMAGES[damage](path)
    raw = tmp_path / "raw.jsonl"
    raw.write_text('{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}\n')
    for args in (
        ["eval", "report"],
        ["chat", "--verdicts"],
        ["data", "clean", str(raw), "--out", str(tmp_path / "clean.jsonl")],
    ):
        _one_line_naming(cli(*args, expect=None), path, "damaged")


def test_catalog_path_still_says_where_a_damaged_catalog_is(cli, openchat_home):
    path = openchat_home / "catalog.db"
    _text(path)
    result = cli("catalog", "path", expect=None)
    assert result.stdout.strip() == str(path)
    _one_line_naming(result, path, "damaged")


def test_moving_a_damaged_catalog_aside_as_told_gives_a_fresh_one(cli, openchat_home):
    path = openchat_home / "catalog.db"
    _truncated(path)
    cli("catalog", "list", expect=2)
    aside = openchat_home / "damaged"
    aside.mkdir()
    for f in openchat_home.glob("catalog.db*"):
        f.rename(aside / f.name)
    assert "is empty" in cli("catalog", "list").stdout


def test_garbled_page_of_a_large_catalog_is_reported_when_read(cli, openchat_home, monkeypatch):
    """Above QUICK_CHECK_MAX_BYTES the open check is cheap; the page is caught when read."""
    import store.catalog

    path = openchat_home / "catalog.db"
    _garbled_page(path)
    monkeypatch.setattr(store.catalog, "QUICK_CHECK_MAX_BYTES", 0)
    cat = open_catalog()  # opens: header and schema are fine
    with pytest.raises(CatalogDamaged, match="malformed"):
        cat.list("datasets")
    cat.close()
    _one_line_naming(cli("catalog", "list", "datasets", expect=None), path, "damaged", "malformed")


def test_damaged_catalog_real_process_has_no_traceback(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    _garbled_page(home / "catalog.db")
    result = _run(["catalog", "list"], home)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert f"catalog {home / 'catalog.db'} is damaged" in result.stderr


@pytest.mark.slow
def test_serve_log_to_catalog_refuses_a_damaged_catalog_before_loading(tiny_model_dir, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    _text(home / "catalog.db")
    started = time.monotonic()
    result = _run(["serve", str(tiny_model_dir), "--port", "0", "--log-to-catalog"], home, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "loading" not in result.stderr  # refused before the model load
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"catalog {home / 'catalog.db'} is damaged" in lines[0]
    assert time.monotonic() - started < 60


# -- unreachable --------------------------------------------------------------------------------


def test_home_that_cannot_be_created(cli, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for home in (blocker / "home", blocker):
        result = cli("--home", str(home), "catalog", "list", expect=None)
        line = _one_line_naming(result, home, "cannot create", "--home")
        assert "OPENCHAT_HOME" in line


def test_catalog_behind_a_dangling_link(cli, openchat_home):
    path = openchat_home / "catalog.db"
    path.symlink_to(openchat_home / "gone" / "catalog.db")
    _one_line_naming(cli("catalog", "list", expect=None), path, "cannot be reached")


def test_catalog_folder_that_cannot_be_created(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(Exception) as err:
        Catalog(blocker / "sub" / "catalog.db")
    assert type(err.value).__name__ == "CatalogUnreachable"
    assert str(blocker / "sub") in str(err.value)


# -- held lock ----------------------------------------------------------------------------------


def test_writer_held_out_by_exclusive_lock_is_one_line_and_loses_nothing(cli, openchat_home, holders, monkeypatch):
    path = openchat_home / "catalog.db"
    cat = open_catalog()
    kept = cat.add_dataset(name="kept", path="/tmp/kept", format="conversations")
    cat.close()
    monkeypatch.setenv("OPENCHAT_BUSY_TIMEOUT", "1")
    holder = holders(path)  # WAL catalog: readers go on, writers wait
    started = time.monotonic()
    assert kept in cli("catalog", "list", "datasets", "--json").stdout
    line = _one_line_naming(cli("catalog", "rm", kept, expect=None), path, "locked by another process")
    assert "OPENCHAT_BUSY_TIMEOUT" in line
    assert time.monotonic() - started < 20
    holder.release()
    assert open_catalog().get(kept)["name"] == "kept"  # nothing lost
    cli("catalog", "rm", kept)  # and the same command works once the lock is gone


@pytest.mark.parametrize("case", ["new-file", "locking-mode-exclusive"])
def test_open_held_out_by_exclusive_lock_is_one_line(cli, openchat_home, holders, monkeypatch, case):
    """A lock that blocks readers too: a file another program created and holds, or one held
    with locking_mode=exclusive (WAL then shares nothing)."""
    path = openchat_home / "catalog.db"
    if case == "locking-mode-exclusive":
        open_catalog().close()
    monkeypatch.setenv("OPENCHAT_BUSY_TIMEOUT", "1")
    holders(path, locking_mode_exclusive=case != "new-file")
    for args in (["catalog", "list"], ["catalog", "path"]):
        _one_line_naming(cli(*args, expect=None), path, "locked by another process")


def test_locked_catalog_real_process_has_no_traceback(tmp_path, holders):
    home = tmp_path / "home"
    home.mkdir()
    holders(home / "catalog.db")
    result = _run(["catalog", "list"], home, OPENCHAT_BUSY_TIMEOUT="0.5")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert f"catalog {home / 'catalog.db'} is locked" in result.stderr


def test_reads_wait_out_a_short_lock(tmp_path, holders):
    """A lock released within the busy timeout is waited for, not reported."""
    path = tmp_path / "c.db"
    cat = Catalog(path)
    ds = cat.add_dataset(name="x", path="/tmp/x", format="raw")
    cat.close()
    holder = holders(path, locking_mode_exclusive=True)
    with pytest.raises(CatalogLocked):
        Catalog(path, busy_timeout_s=0.3)
    # The holder dies 1 s into the wait (a timer thread: no Python start-up to race the timeout).
    releaser = threading.Timer(1.0, holder.process.kill)
    releaser.start()
    started = time.monotonic()
    try:
        cat = Catalog(path, busy_timeout_s=60)
    finally:
        releaser.join()
    assert cat.get(ds)["name"] == "x"
    assert cat.count("datasets") == 1
    assert time.monotonic() - started < 45  # waited out the lock, not the whole busy timeout


def test_bad_busy_timeout_is_one_line(cli, monkeypatch):
    for value in ("soon", "-1", "inf", "nan"):
        monkeypatch.setenv("OPENCHAT_BUSY_TIMEOUT", value)
        result = cli("catalog", "list", expect=2)
        assert f"OPENCHAT_BUSY_TIMEOUT='{value}' is not a number" in result.stderr


def test_request_log_of_a_locked_catalog_is_one_line_per_request(tmp_path, holders, caplog):
    """`serve --log-to-catalog`: a catalog locked while serving costs a warning line, no traceback."""
    from openchat_cli.serve.app import RequestLogger

    path = tmp_path / "c.db"
    cat = Catalog(path, busy_timeout_s=0.3)
    holders(path)
    logger = RequestLogger(None, cat, "tiny", None)
    with caplog.at_level("WARNING"):
        logger.record(time="2026-01-01T00:00:00", endpoint="/v1/chat/completions", output=["hi"])
        logger.close(timeout=15)
    failures = [r for r in caplog.records if "could not log a request" in r.getMessage()]
    assert len(failures) == 1
    assert failures[0].exc_info is None
    assert f"catalog {path} is locked by another process" in failures[0].getMessage()


def test_writers_killed_mid_write_leave_a_catalog_that_opens(tmp_path):
    """kill -9 of writers mid-transaction leaves a hot WAL, not damage: the next open recovers
    it, the check at open passes, and every committed row is whole."""
    path = tmp_path / "c.db"
    Catalog(path).close()
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from store.catalog import Catalog\n"
        f"cat = Catalog({str(path)!r})\n"
        "chat = cat.add_chat(title=sys.argv[1], endpoint=None, model=None)\n"
        "i = 0\n"
        "while True:\n"
        "    cat.add_chat_message(chat, 'user', 'x' * 3000)\n"
        "    i += 1\n"
    )
    writers = [subprocess.Popen([sys.executable, "-c", code, f"w{k}"]) for k in range(4)]
    cat = Catalog(path)
    deadline = time.monotonic() + 60
    while cat.count("chat_messages") < 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    for writer in writers:
        writer.kill()
        writer.wait(timeout=10)
    cat.close()
    assert all(w.returncode == -9 for w in writers)
    again = Catalog(path)  # runs quick_check
    assert again.count("chat_messages") >= 200
    assert again.scalar("pragma quick_check") == "ok"
    assert not again.exists("select 1 from chat_messages where length(content) != 3000")
