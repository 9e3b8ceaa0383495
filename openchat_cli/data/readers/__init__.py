"""Read raw conversation dumps: files or folders of JSON, JSONL and saved HTML pages.

The container (JSON array, JSONL, concatenated objects, HTML page) is detected from the
content; the record shape (ShareGPT, Alpaca, Dolly, OpenAI messages) per record, in
`openchat_cli.data.formats`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from openchat_cli.data.readers.html_page import iter_html_page
from openchat_cli.data.readers.jsonstream import JsonStream, is_jsonl, iter_jsonl, sniff
from openchat_cli.data.records import RawItem
from openchat_cli.errors import OpenchatError

SUFFIXES = {".json", ".jsonl", ".ndjson", ".html", ".htm"}
HTML_SUFFIXES = {".html", ".htm"}


@dataclass
class ReadReport:
    """What the readers noticed besides records: warnings and per-file record counts (the first
    KEEP files and warnings; totals always), so a folder of a million pages stays small."""

    KEEP = 1000

    warnings: list[str] = field(default_factory=list)
    files: dict[str, int] = field(default_factory=dict)  # file -> records read
    truncated: dict[str, int] = field(default_factory=dict)  # file -> byte offset where it stopped
    file_count: int = 0
    warning_count: int = 0

    def warn(self, message: str) -> None:
        self.warning_count += 1
        if len(self.warnings) < self.KEEP:
            self.warnings.append(message)

    def file_done(self, name: str, records: int) -> None:
        self.file_count += 1
        if len(self.files) < self.KEEP:
            self.files[name] = records


def expand_sources(paths: list[Path]) -> list[tuple[Path, str]]:
    """Files to read, each with its source name: a file as given is named by its file name; files
    found in a folder (walked sorted, known suffixes, hidden ones skipped) by their path from the
    folder's parent, e.g. `pages/gpt4/abc.html`, so `--keep-source` and `--class` can match
    sub-folders."""
    files: list[tuple[Path, str]] = []
    for path in paths:
        if not path.exists():
            raise OpenchatError(f"{path}: no such file or folder")
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and p.suffix.lower() in SUFFIXES
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            if not found:
                raise OpenchatError(f"{path}: folder holds no .json, .jsonl or .html files to read")
            base = path.resolve().name or str(path)
            files += [(p, "/".join((base, *p.relative_to(path).parts))) for p in found]
        else:
            files.append((path, path.name))
    return files


def expand(paths: list[Path]) -> list[Path]:
    return [p for p, _ in expand_sources(paths)]


def read_file(path: Path, report: ReadReport, name: str | None = None) -> Iterator[RawItem]:
    """Every record of one file; fails (OpenchatError) only if the file cannot be read at all."""
    name = name or str(path)
    try:
        kind = "html" if path.suffix.lower() in HTML_SUFFIXES else sniff(path)
    except OSError as exc:
        raise OpenchatError(f"{path}: cannot read ({exc.strerror or exc})") from None
    count = 0
    if kind == "empty":
        report.warn(f"{name}: empty file")
    elif kind == "unknown":
        raise OpenchatError(f"{path}: not JSON, JSONL or an HTML page (it should start with '[', '{{' or '<')")
    elif kind == "html":
        for item in iter_html_page(path, name, 1):
            count += 1
            yield item
    else:
        try:
            fh = open(path, "rb")
        except OSError as exc:
            raise OpenchatError(f"{path}: cannot read ({exc.strerror or exc})") from None
        with fh:
            if kind == "stream" and is_jsonl(path):
                for item in iter_jsonl(fh, name):
                    count += 1
                    yield item
            else:
                stream = JsonStream(fh, name)
                for item in stream:
                    count += 1
                    yield item
                for warning in stream.warnings:
                    report.warn(warning)
                if stream.truncated_at is not None and len(report.truncated) < report.KEEP:
                    report.truncated[name] = stream.truncated_at
    report.file_done(name, count)


def read_inputs(paths: list[Path], report: ReadReport) -> Iterator[RawItem]:
    for path in expand(paths):
        yield from read_file(path, report)
