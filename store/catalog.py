"""Typed access to the catalog database (catalog.db in OPENCHAT_HOME).

Several processes write at once (a server logging requests, an eval run storing answers, the
TUI saving chats), so the database runs in WAL mode with a busy timeout, and every write is a
short transaction retried if the database stays locked.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import secrets
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlite_utils import Database

from store import faults
from store.faults import CatalogError
from store.migrations import applied, migrate
from store.reads import CatalogReads

T = TypeVar("T")

# id prefix -> table. Ids are short, typed and human-typable: ds-1a2b3c4d, ck-…, run-…, ev-…, chat-…
KINDS: dict[str, str] = {
    "ds": "datasets",
    "ck": "checkpoints",
    "run": "runs",
    "ev": "evals",
    "chat": "chats",
}
TABLE_PREFIX = {table: prefix for prefix, table in KINDS.items()}
# Names accepted by `catalog list` (plural nouns people type) -> table.
LIST_NAMES = {
    "datasets": "datasets",
    "checkpoints": "checkpoints",
    "models": "checkpoints",
    "runs": "runs",
    "evals": "evals",
    "chats": "chats",
}
JSON_COLUMNS = {
    "counts",
    "meta",
    "metrics",
    "config",
    "loss_curve",
    "turns",
    "reference",
    "settings",
    "request",
}
ID_RE = re.compile(r"^(ds|ck|run|ev|chat)-[0-9a-f]{2,}$")
# Files up to this size get SQLite's `quick_check` each time they are opened: it reads every
# page, ~1 ms per MiB from the page cache (0.3 s for a 458 MiB catalog, 7.5 s from a cold disk).
# Larger ones get a cheap check (header and schema); a garbled page there is still reported in
# the same words when a command reads it (see store/faults.py).
QUICK_CHECK_MAX_BYTES = 32 * 2**20


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


# Set for worker processes (training ranks) to the command line of the command that started them.
COMMAND_ENV = "OPENCHAT_COMMAND"


def current_command() -> str:
    """The command line that is producing a row, recorded for lineage: a worker records its
    command's line (`openchat train …`), not its own (`… launch OUT/run.json`)."""
    return os.environ.get(COMMAND_ENV) or " ".join(["openchat", *sys.argv[1:]])


def looks_like_id(value: str) -> bool:
    return bool(ID_RE.match(str(value)))


def _encode(row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in row.items():
        if key in JSON_COLUMNS and value is not None and not isinstance(value, str):
            value = json.dumps(value, default=str, ensure_ascii=False)
        elif isinstance(value, Path):
            value = str(value)
        out[key] = value
    return out


def decode(row: dict[str, Any] | None) -> dict[str, Any] | None:
    """Turn JSON text columns back into Python values."""
    if row is None:
        return None
    out = dict(row)
    for key in JSON_COLUMNS & out.keys():
        value = out[key]
        if isinstance(value, str) and value and (value[0] in '[{"' or value in ("null", "true", "false")):
            try:
                out[key] = json.loads(value)
            except (TypeError, ValueError):
                pass
    return out


class Catalog(CatalogReads):
    """One connection to catalog.db, safe to share between threads of one process.

    Every statement runs under the store's lock, waits out other processes' locks for up to
    `busy_timeout_s` (default $OPENCHAT_BUSY_TIMEOUT or 30 s), and a damaged, locked or
    unreachable file surfaces as one `CatalogError` naming it (store/faults.py).
    """

    def __init__(self, path: Path | str, *, busy_timeout_s: float | None = None):
        self.path = Path(path)
        self.busy_timeout_s = faults.busy_timeout_s() if busy_timeout_s is None else busy_timeout_s
        self._lock = threading.RLock()
        self._in_immediate = False  # inside `immediate()` (only ever true for the lock's owner)
        self._column_cache: dict[str, set[str]] = {}
        conn = self._connect()
        try:
            with self._translated():
                conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
                self.db = Database(conn)
                self._check()  # before anything writes to the file
                self._wal(conn)
                conn.execute("PRAGMA synchronous = NORMAL")
                conn.execute("PRAGMA foreign_keys = ON")
            self._write(lambda: migrate(self.db))
        except BaseException:
            conn.close()
            raise

    # -- low level -------------------------------------------------------------------------
    def _translated(self):
        return faults.translated(self.path, self.busy_timeout_s)

    def _connect(self) -> sqlite3.Connection:
        """Open the file, creating its folder; a folder in its place or a folder that cannot be
        made is reported as such rather than as SQLite's 'unable to open database file'."""
        if self.path.is_dir():
            raise faults.damaged(self.path, "it is a folder, not a database file")
        if self.path.is_symlink() and not self.path.exists():
            raise faults.unreachable(self.path, f"a link to {os.readlink(self.path)}, which cannot be reached")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise faults.unreachable(self.path, f"cannot create {self.path.parent}: {exc.strerror or exc}") from exc
        with self._translated():
            return sqlite3.connect(str(self.path), timeout=self.busy_timeout_s, check_same_thread=False)

    def _check(self) -> None:
        """Refuse a damaged file (or another program's database) at open, before any command
        works on it. Every catalog has had `_migrations` since its first table was made."""
        tables = [
            row[0]
            for row in self.db.conn.execute(
                "select name from sqlite_master where type = 'table' and name not like 'sqlite_%' order by name"
            )
        ]
        if tables and "_migrations" not in tables:
            raise faults.foreign(self.path, tables)
        try:
            size = self.path.stat().st_size
        except OSError:
            size = 0
        if size > QUICK_CHECK_MAX_BYTES:
            return
        problems = "\n".join(row[0] for row in self.db.conn.execute("PRAGMA quick_check(3)").fetchall())
        if problems != "ok":
            first, *rest = [
                line for line in problems.splitlines() if line.strip("* ") and not line.startswith("*** in database")
            ] or ["quick_check failed"]
            raise faults.damaged(self.path, f"{first}{' …' if rest else ''}")

    def _wal(self, conn: sqlite3.Connection) -> None:
        """Switch to WAL (once per file; it sticks). The switch needs the file to itself and
        does not wait on the busy timeout, so retry while another process is opening it too."""
        deadline = time.monotonic() + self.busy_timeout_s
        while True:
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if not faults.is_lock_error(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _retrying(self, fn: Callable[[], T], *, transaction: bool) -> T:
        """Run `fn` under the store's lock (in a transaction when asked), retrying while another
        process holds the database's lock, for up to the busy timeout."""
        deadline = time.monotonic() + self.busy_timeout_s
        with self._translated():
            while True:
                try:
                    with self._lock:
                        if not transaction:
                            return fn()
                        with self.db.conn:
                            return fn()
                except sqlite3.OperationalError as exc:
                    if not faults.is_lock_error(exc) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)

    def _write(self, fn: Callable[[], T]) -> T:
        """Run `fn` in a transaction, retrying while another process holds the write lock.

        Inside `immediate()` it joins that transaction instead."""
        with self._lock:
            if self._in_immediate:
                with self._translated():
                    return fn()
        return self._retrying(fn, transaction=True)

    def _read(self, fn: Callable[[], T]) -> T:
        """Run a read `fn`, retrying while another process holds a lock that blocks readers."""
        return self._retrying(fn, transaction=False)

    @contextmanager
    def immediate(self) -> Iterator[None]:
        """One write transaction that takes the write lock up front (BEGIN IMMEDIATE).

        What is read inside it cannot change before it commits, so a find-or-create done here
        is atomic across processes: two identical commands started together get one row.
        Writes made inside join it; it commits when the block ends, rolls back on an error.
        """
        with self._lock:
            if self._in_immediate:
                yield
                return
            self._retrying(lambda: self.db.conn.execute("begin immediate"), transaction=False)
            self._in_immediate = True
            try:
                yield
            except BaseException:
                self.db.conn.rollback()
                raise
            else:
                with self._translated():
                    self.db.conn.commit()
            finally:
                self._in_immediate = False

    def _columns(self, table: str) -> set[str]:
        if table not in self._column_cache:
            self._column_cache[table] = self._read(lambda: set(self.db[table].columns_dict))
        return self._column_cache[table]

    def new_id(self, prefix: str) -> str:
        table = KINDS[prefix]
        while True:
            candidate = f"{prefix}-{secrets.token_hex(4)}"
            if not self.exists(f"select 1 from [{table}] where id = ?", [candidate]):
                return candidate

    def insert(self, table: str, row: dict[str, Any], *, replace: bool = False) -> dict[str, Any]:
        """Insert one row; give it a typed id if the table has one and none was passed."""
        row = dict(row)
        if table in TABLE_PREFIX and not row.get("id"):
            row["id"] = self.new_id(TABLE_PREFIX[table])
        if "created_at" in self._columns(table):
            row.setdefault("created_at", now())
        encoded = _encode(row)
        self._write(lambda: self.db[table].insert(encoded, replace=replace, alter=False))
        return row

    def insert_new(self, table: str, row: dict[str, Any]) -> bool:
        """Insert one row unless a unique key already holds one (INSERT OR IGNORE); True when
        stored. How a unit of work done twice (two processes, a retry) is stored once."""
        row = dict(row)
        if "created_at" in self._columns(table):
            row.setdefault("created_at", now())
        encoded = _encode(row)

        def write() -> bool:
            before = self.db.conn.total_changes
            self.db[table].insert(encoded, ignore=True, alter=False)
            return self.db.conn.total_changes > before

        return self._write(write)

    def insert_many(self, table: str, rows: Iterable[dict[str, Any]], *, replace: bool = False) -> None:
        encoded = [_encode(r) for r in rows]
        if encoded:
            self._write(lambda: self.db[table].insert_all(encoded, replace=replace))

    def write(self, sql: str, params: Iterable[Any] | dict = ()) -> int:
        """Run one write statement in a short transaction (joining `immediate()` when inside
        one); returns the number of rows it changed."""
        return self._write(lambda: self.db.conn.execute(sql, params).rowcount)

    def update(self, table: str, pk: Any, **fields: Any) -> None:
        encoded = _encode(fields)
        self._write(lambda: self.db[table].update(pk, encoded))

    def link(self, child_id: str, parent_id: str | None, relation: str) -> None:
        """Record that `child_id` was made from `parent_id` (a lineage edge)."""
        if not parent_id:
            return
        row = {"child_id": child_id, "parent_id": parent_id, "relation": relation, "created_at": now()}
        self._write(lambda: self.db["links"].insert(row, replace=True))

    # -- reads (typed lookups built on these are in store/reads.py) -------------------------
    def query(self, sql: str, params: Iterable[Any] | dict | None = None) -> list[dict[str, Any]]:
        """Every row `sql` selects, as dicts with JSON columns decoded."""
        return self._read(lambda: [decode(r) for r in self.db.query(sql, params or [])])

    def one(self, sql: str, params: Iterable[Any] | dict | None = None) -> dict[str, Any] | None:
        """The first row `sql` selects (decoded), or None."""

        def first() -> dict[str, Any] | None:
            cursor = self.db.conn.execute(sql, params or [])
            row = cursor.fetchone()
            if row is None:
                return None
            return decode(dict(zip([c[0] for c in cursor.description], row)))

        return self._read(first)

    def scalar(self, sql: str, params: Iterable[Any] | dict | None = None) -> Any:
        """The first column of the first row `sql` selects, or None when it selects nothing."""

        def first() -> Any:
            row = self.db.conn.execute(sql, params or []).fetchone()
            return None if row is None else row[0]

        return self._read(first)

    def exists(self, sql: str, params: Iterable[Any] | dict | None = None) -> bool:
        """Whether `sql` selects any row."""
        return self._read(lambda: self.db.conn.execute(sql, params or []).fetchone() is not None)

    def count(self, table: str, **match: Any) -> int:
        """Rows of `table` whose columns equal `match` (all rows when none given)."""
        where = " and ".join(f"[{col}] = ?" for col in match) or "1"
        return int(self.scalar(f"select count(*) from [{table}] where {where}", list(match.values())))

    def applied_migrations(self) -> list[str]:
        """Names of the schema migrations this file has had, oldest first."""
        return self._read(lambda: applied(self.db))

    def rows(
        self, table: str, where: str | None = None, params: Iterable[Any] | None = None, order_by: str | None = None
    ) -> Iterator[dict[str, Any]]:
        found = self._read(lambda: list(self.db[table].rows_where(where, params or [], order_by=order_by)))
        return (decode(r) for r in found)

    # -- typed records ----------------------------------------------------------------------
    def add_dataset(
        self,
        *,
        name: str,
        path: Path | str,
        format: str,
        parent_id: str | None = None,
        content_hash: str | None = None,
        num_records: int | None = None,
        counts: dict | None = None,
        meta: dict | None = None,
        command: str | None = None,
        parents: Iterable[str] = (),
    ) -> str:
        row = self.insert(
            "datasets",
            {
                "name": name,
                "path": str(Path(path).resolve()),
                "format": format,
                "content_hash": content_hash,
                "num_records": num_records,
                "counts": counts,
                "parent_id": parent_id,
                "command": command or current_command(),
                "meta": meta,
            },
        )
        for parent in [parent_id, *parents]:
            self.link(row["id"], parent, "derived-from")
        return row["id"]

    def add_checkpoint(
        self,
        *,
        path: Path | str,
        kind: str,
        name: str | None = None,
        base_model: str | None = None,
        template: str | None = None,
        run_id: str | None = None,
        dataset_id: str | None = None,
        step: int | None = None,
        metrics: dict | None = None,
        command: str | None = None,
        parent_id: str | None = None,
    ) -> str:
        path = Path(path).resolve()
        row = self.insert(
            "checkpoints",
            {
                "name": name or path.name,
                "path": str(path),
                "kind": kind,
                "base_model": base_model,
                "template": template,
                "run_id": run_id,
                "dataset_id": dataset_id,
                "step": step,
                "metrics": metrics,
                "command": command or current_command(),
            },
        )
        self.link(row["id"], run_id, "trained-by")
        self.link(row["id"], dataset_id, "trained-on")
        self.link(row["id"], parent_id, "derived-from")
        return row["id"]

    def add_run(
        self,
        *,
        config: dict,
        dataset_id: str | None,
        base_checkpoint_id: str | None,
        output_path: Path | str,
        kind: str = "train",
        command: str | None = None,
    ) -> str:
        row = self.insert(
            "runs",
            {
                "kind": kind,
                "status": "running",
                "config": config,
                "dataset_id": dataset_id,
                "base_checkpoint_id": base_checkpoint_id,
                "output_path": str(output_path),
                "loss_curve": [],
                "metrics": {},
                "command": command or current_command(),
            },
        )
        self.link(row["id"], dataset_id, "trained-on")
        self.link(row["id"], base_checkpoint_id, "starts-from")
        return row["id"]

    def add_eval(
        self,
        *,
        kind: str,
        name: str | None = None,
        questions_path: str | None = None,
        questions_hash: str | None = None,
        endpoint: str | None = None,
        model: str | None = None,
        checkpoint_id: str | None = None,
        parent_id: str | None = None,
        baseline_id: str | None = None,
        config: dict | None = None,
        command: str | None = None,
    ) -> str:
        row = self.insert(
            "evals",
            {
                "kind": kind,
                "name": name,
                "status": "running",
                "questions_path": questions_path,
                "questions_hash": questions_hash,
                "endpoint": endpoint,
                "model": model,
                "checkpoint_id": checkpoint_id,
                "parent_id": parent_id,
                "baseline_id": baseline_id,
                "config": config or {},
                "metrics": {},
                "command": command or current_command(),
            },
        )
        self.link(row["id"], checkpoint_id, "evaluates")
        self.link(row["id"], parent_id, "judges")
        self.link(row["id"], baseline_id, "baseline")
        return row["id"]

    def find_or_add_eval(self, find: Callable[[], dict[str, Any] | None], **fields: Any) -> tuple[dict[str, Any], bool]:
        """The eval run `find()` returns, or a new one made from `fields` (see `add_eval`), in
        one write transaction: of two identical commands started together, the second joins
        the run the first made. Returns (row, created)."""
        with self.immediate():
            found = find()
            if found is not None:
                return found, False
            return self.get(self.add_eval(**fields)), True

    def add_chat(
        self,
        *,
        title: str,
        endpoint: str | None,
        model: str | None,
        system: str | None = None,
        condition: str | None = None,
        settings: dict | None = None,
    ) -> str:
        stamp = now()
        row = self.insert(
            "chats",
            {
                "title": title,
                "endpoint": endpoint,
                "model": model,
                "system": system,
                "condition": condition,
                "settings": settings or {},
                "created_at": stamp,
                "updated_at": stamp,
            },
        )
        return row["id"]

    def add_chat_message(self, chat_id: str, role: str, content: str, meta: dict | None = None) -> int:
        def write() -> int:
            (last,) = self.db.execute(
                "select coalesce(max(idx), -1) from chat_messages where chat_id = ?", [chat_id]
            ).fetchone()
            self.db["chat_messages"].insert(
                _encode(
                    {
                        "chat_id": chat_id,
                        "idx": last + 1,
                        "role": role,
                        "content": content,
                        "meta": meta,
                        "created_at": now(),
                    }
                )
            )
            self.db["chats"].update(chat_id, {"updated_at": now()})
            return last + 1

        return self._write(write)

    def chat_messages(self, chat_id: str) -> list[dict[str, Any]]:
        return list(self.rows("chat_messages", "chat_id = ?", [chat_id], order_by="idx"))

    # -- lookups ----------------------------------------------------------------------------
    def resolve(self, ref: str) -> str:
        """Full id from an id or a unique prefix of one (like git: `ds-1a2` for `ds-1a2b3c4d`)."""
        ref = str(ref).strip()
        prefix = ref.split("-", 1)[0]
        table = KINDS.get(prefix)
        if table is None or "-" not in ref:
            raise CatalogError(f"'{ref}' is not a catalog id (expected ds-…, ck-…, run-…, ev-… or chat-…)")
        found = [r["id"] for r in self.query(f"select id from [{table}] where id like ? order by id", [ref + "%"])]
        if not found:
            raise CatalogError(f"no {table[:-1]} with id '{ref}' in catalog {self.path}")
        if ref in found:
            return ref
        if len(found) > 1:
            raise CatalogError(f"id prefix '{ref}' is ambiguous: {', '.join(found[:5])}")
        return found[0]

    def get(self, ref: str) -> dict[str, Any]:
        full = self.resolve(ref)
        table = KINDS[full.split("-", 1)[0]]
        row = self.one(f"select * from [{table}] where id = ?", [full])
        if row is None:  # removed by another process since `resolve`
            raise CatalogError(f"no {table[:-1]} with id '{full}' in catalog {self.path}")
        return row

    def table_of(self, ref: str) -> str:
        return KINDS[self.resolve(ref).split("-", 1)[0]]

    def resolve_path(self, value: str | Path, expect: str | None = None) -> Path:
        """A path, or the path of a catalog row given by id (ids are accepted anywhere a path is)."""
        text = str(value)
        if looks_like_id(text) and not Path(text).exists():
            row = self.get(text)
            if expect and self.table_of(text) != expect:
                raise CatalogError(f"'{text}' is a {self.table_of(text)[:-1]}, expected a {expect[:-1]}")
            path = row.get("path") or row.get("output_path") or row.get("questions_path")
            if not path:
                raise CatalogError(f"'{text}' has no path recorded")
            return Path(path)
        return Path(text)

    def find_by_path(self, table: str, path: Path | str) -> dict[str, Any] | None:
        """The newest row of `table` recorded for `path` (so outputs link to what made their inputs)."""
        rows = self.query(
            f"select * from [{table}] where path = ? order by created_at desc, rowid desc limit 1",
            [str(Path(path).resolve())],
        )
        return rows[0] if rows else None

    def list(self, table: str, limit: int | None = None) -> list[dict[str, Any]]:
        sql = f"select * from [{table}] order by created_at desc, rowid desc"
        if limit:
            sql += f" limit {int(limit)}"
        return self.query(sql)

    def lineage(self, ref: str) -> dict[str, Any]:
        """What `ref` came from (ancestors) and what came from it (descendants), transitively."""
        root = self.resolve(ref)

        def walk(start: str, up: bool) -> list[dict[str, Any]]:
            seen, out, frontier = {start}, [], [(start, 1)]
            while frontier:
                node, depth = frontier.pop(0)
                col, other = ("child_id", "parent_id") if up else ("parent_id", "child_id")
                for edge in self.query(f"select * from links where {col} = ? order by created_at", [node]):
                    nxt = edge[other]
                    if nxt in seen:
                        continue
                    seen.add(nxt)
                    out.append(
                        {
                            "id": nxt,
                            "relation": edge["relation"],
                            "via": node,
                            "depth": depth,
                            "summary": self.summary(nxt),
                        }
                    )
                    frontier.append((nxt, depth + 1))
            return out

        return {
            "id": root,
            "summary": self.summary(root),
            "ancestors": walk(root, True),
            "descendants": walk(root, False),
        }

    def summary(self, ref: str) -> str:
        """One line saying what a row is, for tables and lineage trees."""
        try:
            row = self.get(ref)
        except CatalogError:
            return "(removed)"
        table = self.table_of(ref)
        if table == "datasets":
            return f"dataset {row['name']} ({row['format']}, {row['num_records']} records)"
        if table == "checkpoints":
            return f"{row['kind']} checkpoint {row['name']} ({row['template'] or 'no template'})"
        if table == "runs":
            return f"{row['kind']} run, {row['status']}"
        if table == "evals":
            return f"{row['kind']} eval {row['name'] or ''} of {row['model'] or '?'}, {row['status']}".replace(
                "  ", " "
            )
        if table == "chats":
            return f"chat '{row['title']}' with {row['model'] or '?'}"
        return table

    def remove(self, ref: str) -> dict[str, Any]:
        """Delete a row, its dependent rows (answers, verdicts, messages) and its lineage edges.

        Files on disk are left alone: the catalog forgets, it does not destroy data.
        """
        full = self.resolve(ref)
        table = self.table_of(full)
        row = self.get(full)

        def delete() -> None:
            if table == "evals":
                for dep in ("questions", "answers", "judgments", "unit_claims"):
                    self.db.execute(f"delete from [{dep}] where eval_id = ?", [full])
            if table == "chats":
                self.db.execute("delete from chat_messages where chat_id = ?", [full])
            self.db.execute("delete from links where child_id = ? or parent_id = ?", [full, full])
            self.db[table].delete(full)

        self._write(delete)
        return row

    def close(self) -> None:
        self.db.conn.close()


def open_catalog(path: Path | str | None = None) -> Catalog:
    """The catalog at `path`, or the one in OPENCHAT_HOME."""
    if path is None:
        from store.home import catalog_path

        path = catalog_path()
    return Catalog(path)
