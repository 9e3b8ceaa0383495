"""Only store/ touches the catalog's connection: everything else goes through its API.

Reads and writes made on `cat.db` (or through `cat._write`) skip the store's lock, its retry
while another process holds the database, and its one-line report of a damaged file. This
test reads the source of every module outside store/ and fails on any such use.
"""

from __future__ import annotations

import io
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("openchat_cli", "tui", "benchmarks", "scripts", "tests")
# The catalog's private parts: its sqlite-utils Database and its internal write/read runners.
PRIVATE = {"db", "_write", "_read", "_retrying", "_lock", "_in_immediate"}
# Product code opens catalog.db only through store/; tests may build damaged files directly.
DRIVERS = {"sqlite3", "sqlite_utils"}


def violations(source: str) -> list[tuple[int, str]]:
    """(line, text) of each use of a catalog's private attribute, and (outside tests) of a
    SQLite driver import. `self._write` is a class's own method (e.g. the request log's)."""
    found = []
    tokens = [
        t
        for t in tokenize.generate_tokens(io.StringIO(source).readline)
        if t.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT)
    ]
    for before, dot, name in zip(tokens, tokens[1:], tokens[2:]):
        if dot.string == "." and name.type == tokenize.NAME and name.string in PRIVATE:
            if name.string != "db" and before.string == "self":
                continue
            found.append((name.start[0], name.line.strip()))
    return found


def driver_imports(source: str) -> list[tuple[int, str]]:
    found = []
    for number, line in enumerate(source.splitlines(), 1):
        words = line.split()
        if len(words) >= 2 and words[0] in ("import", "from") and words[1].split(".")[0] in DRIVERS:
            found.append((number, line.strip()))
    return found


def test_nothing_outside_store_touches_the_catalog_connection():
    this = Path(__file__).resolve()
    problems = []
    for folder in SCANNED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.resolve() == this:
                continue
            source = path.read_text(encoding="utf-8")
            found = violations(source)
            if folder != "tests":
                found += driver_imports(source)
            problems += [f"{path.relative_to(ROOT)}:{line}: {text}" for line, text in found]
    assert not problems, (
        "use the store's API (Catalog.query/one/scalar/count/write, store/reads.py) instead of:\n" + "\n".join(problems)
    )


def test_the_guard_sees_what_it_forbids():
    """The scan itself: each form it must catch is caught, and a class's own `_write` is not."""
    caught = violations(
        "n = cat.db.execute('select 1').fetchone()\n"
        "cat._write(lambda: None)\n"
        "rows = self.catalog.db['chats'].count\n"
        "with catalog._lock:\n    pass\n"
    )
    assert [line for line, _ in caught] == [1, 2, 3, 4]
    assert violations("self._write(entry)\npath = home / 'catalog.db'\n# cat.db.execute\n") == []
    assert driver_imports("import sqlite3\nfrom sqlite_utils import Database\n") == [
        (1, "import sqlite3"),
        (2, "from sqlite_utils import Database"),
    ]
