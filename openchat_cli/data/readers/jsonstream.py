"""Streaming JSON readers: JSONL line by line, and JSON arrays (or concatenated objects) element
by element, in bounded memory, surviving a file that was cut off mid-way.

A JSON array is scanned with a regular expression that jumps over strings and tracks bracket
depth, so each element's extent is found before it is parsed: a malformed element is skipped
(and reported with its line), and an element with no end is where a truncated download stopped
(reported with its byte offset).
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from openchat_cli.data.readers.textcheck import bad_text, may_hold_bad_text, too_deep
from openchat_cli.data.records import Location, RawItem

CHUNK = 1 << 20  # bytes read at a time
GROWTH = 8  # an element longer than the buffer grows it by 1/GROWTH at a time (bounded read-ahead)

# A string (possibly unterminated at the end of the buffer) or a bracket.
_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*(")?|[{}\[\]]', re.S)
# The rest of a string whose opening quote came earlier: stops before a trailing lone backslash,
# so where it stops is always a safe place to resume.
_STRING_REST = re.compile(r'[^"\\]*(?:\\.[^"\\]*)*(")?', re.S)
_SKIP = re.compile(r"[\s,]*")
_WS = re.compile(r"\s*")
_DECODER = json.JSONDecoder()


def parse_record(text: str, start: int, end: int, loc: Location, container: str = "json") -> RawItem:
    """One record from text[start:end] (parsed in place, no copy): the parsed value, or an error
    item saying why not (invalid JSON, nesting too deep, text that is not valid Unicode)."""
    try:
        value, stop = _DECODER.raw_decode(text, start)
    except RecursionError:
        return RawItem(loc, error=too_deep(text, start, end), container=container)
    except ValueError as exc:
        return RawItem(loc, error=f"invalid JSON: {exc}", container=container)
    if text[stop:end].strip():
        return RawItem(loc, error=f"invalid JSON: extra data at column {stop - start + 1}", container=container)
    if may_hold_bad_text(text, start, end):
        problem = bad_text(value, text, start, end)
        if problem is not None:
            return RawItem(loc, value, error=problem, container=container)
    return RawItem(loc, value, container=container)


def iter_jsonl(fh: BinaryIO, name: str) -> Iterator[RawItem]:
    """One record per non-blank line; a line that is not JSON becomes an error item."""
    record = 0
    for lineno, raw in enumerate(fh, 1):
        if not raw.strip():
            continue
        record += 1
        loc = Location(name, record, lineno)
        text = raw.decode("utf-8", "surrogateescape")
        if lineno == 1 and text.startswith("\ufeff"):
            text = text[1:]
        start = len(text) - len(text.lstrip())
        yield parse_record(text, start, len(text), loc, container="jsonl")


class JsonStream:
    """Elements of a top-level JSON array, or of a stream of JSON values (one pretty-printed
    object, or several concatenated), read incrementally.

    After iteration, `truncated_at` holds the byte offset where an incomplete element began
    (None if the input ended cleanly), and `warnings` what else looked wrong.
    """

    def __init__(self, fh: BinaryIO, name: str):
        self.fh = fh
        self.name = name
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
        self.buf = ""
        self.pos = 0
        self.line = 1  # line number at self.pos
        self.bytes_read = 0
        self.eof = False
        self.truncated_at: int | None = None
        self.warnings: list[str] = []
        self.records = 0

    # -- buffer ---------------------------------------------------------------------------
    def _more(self, at_least: int = CHUNK) -> bool:
        """Append more text to the buffer (dropping what was consumed); False at end of file."""
        if self.eof:
            return False
        if self.pos:
            self.buf = self.buf[self.pos :]
            self.pos = 0
        data = self.fh.read(max(CHUNK, at_least))
        self.bytes_read += len(data)
        if not data:
            self.eof = True
            self.buf += self.decoder.decode(b"", final=True)
            return False
        text = self.decoder.decode(data)
        del data
        self.buf += text
        return True

    def byte_offset(self, pos: int) -> int:
        """Byte offset in the file of buffer position `pos`."""
        pending = len(self.decoder.getstate()[0])
        return self.bytes_read - pending - len(self.buf[pos:].encode("utf-8", "surrogateescape"))

    def _advance(self, to: int) -> None:
        self.line += self.buf.count("\n", self.pos, to)
        self.pos = to

    def _skip(self, pattern: re.Pattern) -> bool:
        """Skip whitespace (and commas); False if the input ends first."""
        while True:
            self._advance(pattern.match(self.buf, self.pos).end())
            if self.pos < len(self.buf):
                return True
            if not self._more():
                return False

    def _element_end(self, start: int) -> int | None:
        """End of the object/array starting at `start`, reading more as needed; None at EOF.

        The scan resumes where it stopped when more text arrives (inside a long string too), and
        a long element grows the buffer by a fraction at a time, so a 50 MB record costs about
        twice its size in memory and one pass of scanning."""
        depth = 0
        scan = start
        in_string = False
        while True:
            buf = self.buf
            if in_string:
                m = _STRING_REST.match(buf, scan)
                scan = m.end()
                in_string = m.start(1) < 0
            if not in_string:
                for m in _TOKEN.finditer(buf, scan):
                    ch = buf[m.start()]  # not m.group(): that would copy a long string's text
                    scan = m.end()
                    if ch == '"':
                        if m.start(1) < 0:
                            in_string = True  # the string runs to the end of the buffer
                            break
                        continue
                    depth += 1 if ch in "{[" else -1
                    if depth == 0:
                        return scan
                else:
                    scan = len(buf)
            del buf
            offset, scanned = start - self.pos, scan - self.pos
            if not self._more(at_least=len(self.buf) // GROWTH):
                return None
            start, scan = self.pos + offset, self.pos + scanned

    # -- iteration ------------------------------------------------------------------------
    def __iter__(self) -> Iterator[RawItem]:
        self._more()
        if self.buf.startswith("\ufeff"):
            self.pos = 1
        if not self._skip(_WS):
            return
        in_array = self.buf[self.pos] == "["
        if in_array:
            self._advance(self.pos + 1)
        while True:
            if not self._skip(_SKIP):
                if in_array:
                    self.truncated_at = self.byte_offset(len(self.buf))
                    self.warnings.append(
                        f"{self.name}: the JSON array is not closed (file ends at byte "
                        f"{self.truncated_at}); kept {self.records} complete record(s)"
                    )
                return
            ch = self.buf[self.pos]
            if in_array and ch == "]":
                self._advance(self.pos + 1)
                if self._skip(_WS):
                    self.warnings.append(f"{self.name}:{self.line}: text after the closing ']' ignored")
                return
            start_line = self.line
            self.records += 1
            loc = Location(self.name, self.records, start_line)
            if ch not in "{[":
                yield self._scalar(loc)
                continue
            start = self.pos
            end = self._element_end(start)
            if end is None:
                start = self.pos  # the buffer may have been compacted
                self.records -= 1
                self.truncated_at = self.byte_offset(start)
                self.warnings.append(
                    f"{self.name}:{start_line}: input cut off inside a record at byte "
                    f"{self.truncated_at}; kept {self.records} complete record(s) before it"
                )
                return
            item = parse_record(self.buf, self.pos, end, loc)
            self._advance(end)
            if self.pos > CHUNK:
                self.buf = self.buf[self.pos :]  # let go of a long record's text before it is used
                self.pos = 0
            yield item
            del item

    def _scalar(self, loc: Location) -> RawItem:
        """A top-level element that is not an object: parse it to skip it, report it."""
        decoder = json.JSONDecoder()
        while True:
            try:
                value, end = decoder.raw_decode(self.buf, self.pos)
            except ValueError as exc:
                if self._more():
                    continue
                # Unparseable junk: skip to the next separator so the scan can go on.
                m = re.compile(r"[,\]\n]").search(self.buf, self.pos + 1)
                self._advance(m.start() if m else len(self.buf))
                return RawItem(loc, error=f"invalid JSON: {exc}")
            self._advance(end)
            return RawItem(loc, error=f"expected an object, found {type(value).__name__}")


def sniff(path: Path) -> str:
    """'array', 'stream' (JSONL or concatenated objects), 'html', or 'empty' from the first bytes."""
    with open(path, "rb") as fh:
        head = fh.read(4096)
    text = head.decode("utf-8", "ignore").lstrip("\ufeff \t\r\n")
    if not text:
        return "empty"
    if text[0] == "[":
        return "array"
    if text[0] == "{":
        return "stream"
    if text[0] == "<":
        return "html"
    return "unknown"


def is_jsonl(path: Path) -> bool:
    """Whether a file that starts with '{' is JSONL (one record per line) rather than one or more
    pretty-printed objects: by its suffix, else if its first non-blank line (or, when that one is
    broken, its second) is a complete JSON object on its own."""
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        return True
    lines: list[bytes] = []
    with open(path, "rb") as fh:
        for raw in fh:
            if raw.strip():
                lines.append(raw)
                if len(lines) == 2:
                    break
    for raw in lines:
        try:
            return isinstance(json.loads(raw), dict)
        except RecursionError:
            return True  # one whole (too deeply nested) record on the line: the reader reports it
        except ValueError:
            if not raw.lstrip().startswith(b"{"):
                return False
    return not lines
