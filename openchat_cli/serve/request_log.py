"""The request log: one JSON line per completion request in a file, and/or a row of the
catalog's `requests` table, written by a thread of its own so the event loop never waits on a
disk or a locked catalog."""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from openchat_cli.serve.guard import request_for_log
from openchat_cli.serve.protocol import printable
from store.catalog import CatalogError

log = logging.getLogger("openchat.serve")


def now() -> str:
    """The time a log entry carries (UTC, milliseconds)."""
    import datetime as dt

    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


class RequestLogger:
    """One JSON line per request in a file, and/or a `requests` row in the catalog."""

    def __init__(self, path: Path | None, catalog: Any, model: str, checkpoint_id: str | None):
        self.path, self.catalog, self.model, self.checkpoint_id = path, catalog, model, checkpoint_id
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        if self.enabled:
            self._thread = threading.Thread(target=self._run, name="openchat-request-log", daemon=True)
            self._thread.start()

    @property
    def enabled(self) -> bool:
        return self.path is not None or self.catalog is not None

    def record(self, **entry: Any) -> None:
        if self.enabled:
            self._queue.put(entry)

    def _run(self) -> None:
        while True:
            entry = self._queue.get()
            if entry is None:
                return
            try:
                entry = self._prepare(entry)
            except Exception:  # a log write must never take the server down
                log.exception("could not log a request")
                continue
            if self.path is not None:
                self._retry("the request log file", self._write_file, entry)
            if self.catalog is not None:
                self._retry("the catalog", self._write_catalog, entry)

    @staticmethod
    def _retry(where: str, write: Callable[[dict[str, Any]], None], entry: dict[str, Any], attempts: int = 4) -> None:
        """A full disk or a locked catalog is often brief: try again before giving up (loudly)."""
        for attempt in range(attempts):
            try:
                write(entry)
                return
            except Exception as exc:
                if attempt < attempts - 1:
                    time.sleep(0.25 * 2**attempt)
                    continue
                what = (entry.get("endpoint"), entry.get("time"), entry.get("status"), where)
                if isinstance(exc, CatalogError):  # damaged or locked catalog.db: its one line
                    log.warning("could not log a request (%s %s, status %s) to %s: %s", *what, exc)
                else:
                    log.exception("could not log a request (%s %s, status %s) to %s", *what)

    def _prepare(self, entry: dict[str, Any]) -> dict[str, Any]:
        if isinstance(entry.get("request"), (bytes, bytearray)):
            entry["request"] = request_for_log(bytes(entry["request"]))
        return {
            "time": entry.pop("time"),
            "endpoint": entry.pop("endpoint"),
            "model": self.model,
            **({"checkpoint_id": self.checkpoint_id} if self.checkpoint_id else {}),
            **entry,
        }

    def _write_file(self, entry: dict[str, Any]) -> None:
        # Lone surrogates (JSON allows "\ud800") are written as the JSON escape they came in
        # as: the line stays valid JSON and the entry is not dropped.
        line = json.dumps(entry, ensure_ascii=False, default=str) + "\n"
        with open(self.path, "ab") as fh:  # type: ignore[arg-type]
            fh.write(line.encode("utf-8", "backslashreplace"))

    def _write_catalog(self, entry: dict[str, Any]) -> None:
        entry = _printable_values(entry)
        output = entry.get("output")
        if isinstance(output, list):
            output = output[0] if len(output) == 1 else json.dumps(output, ensure_ascii=False)
        if output is None and entry.get("error"):
            output = f"error: {entry['error']}"
        self.catalog.insert(
            "requests",
            {
                "time": entry["time"],
                "endpoint": entry["endpoint"],
                "model": self.model,
                "checkpoint_id": self.checkpoint_id,
                "request": entry.get("request"),
                "output": output,
                "prompt_tokens": entry.get("prompt_tokens"),
                "completion_tokens": entry.get("completion_tokens"),
                "latency_s": entry.get("latency_s"),
                "status": entry.get("status"),
            },
        )

    def close(self, timeout: float = 15.0) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None


def _printable_values(value: Any) -> Any:
    """`value` with every string UTF-8-encodable (SQLite refuses lone surrogates)."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {printable(str(k)): _printable_values(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_printable_values(v) for v in value]
    return value
