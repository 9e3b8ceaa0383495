"""Files and catalog plumbing shared by the `data` commands: inputs given as paths or catalog
ids, outputs written under a temporary name and published (renamed) in the same catalog
transaction that registers them, so a user never sees a file without its catalog row or a row
without its file."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from openchat_cli.atomic import remove_stale_temps, temp_file_beside
from openchat_cli.errors import OpenchatError


def resolve_input(value: str | Path, must_exist: bool = True) -> tuple[Path, str | None]:
    """A path from a path or a catalog dataset id; returns (path, dataset id if given by id)."""
    from store.catalog import looks_like_id, open_catalog

    text = str(value)
    dataset_id = None
    if looks_like_id(text) and not Path(text).exists():
        catalog = open_catalog()
        path = catalog.resolve_path(text, expect="datasets")
        dataset_id = catalog.resolve(text)
    else:
        path = Path(text).expanduser()
    if must_exist and not path.exists():
        raise OpenchatError(f"{path}: no such file or folder")
    return path, dataset_id


def dataset_id_for(path: Path, given: str | None = None, catalog: Any = None) -> str | None:
    """The catalog id of a dataset file: the id it was given by, else the newest row for its path."""
    if given:
        return given
    if catalog is None:
        from store.catalog import open_catalog

        catalog = open_catalog()
    row = catalog.find_by_path("datasets", path)
    return row["id"] if row else None


def ensure_registered(path: Path, fmt: str, given: str | None = None, catalog: Any = None, **fields: Any) -> str:
    """The dataset id for `path`, registering it (as `fmt`) if the catalog does not know it yet,
    so every output has a parent in the lineage. Pass `catalog` inside a transaction (another
    connection would wait on the lock that transaction holds)."""
    if catalog is None:
        from store.catalog import open_catalog

        catalog = open_catalog()
    found = dataset_id_for(path, given, catalog)
    if found:
        return found
    return catalog.add_dataset(name=path.name, path=path, format=fmt, **fields)


T = TypeVar("T")


def _exit_on_term(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


class StagedOutputs:
    """Output files written under temp names beside their final names, then published together
    with their catalog rows: `publish` takes the catalog's write lock, runs `register`, renames
    every temp file into place and commits. If the catalog stays locked (or anything else fails)
    no output appears and no row is written, so the same command can simply be run again.

    Use as a context manager: temp files not published by the end of the block are removed.
    Temp files a killed earlier run left for the same outputs are removed when staging them
    (`removed_stale`), when their writer is provably gone (see openchat_cli.atomic)."""

    def __init__(self) -> None:
        self.files: list[tuple[Path, Path]] = []  # (temp, final)
        self.removed_stale: list[Path] = []
        self._previous_term: Any = None

    def __enter__(self) -> StagedOutputs:
        # SIGTERM (a scheduler stopping the job, `kill`) unwinds like Ctrl-C, so the temp files
        # go now instead of waiting for the next run to find them stale.
        if threading.current_thread() is threading.main_thread():
            self._previous_term = signal.signal(signal.SIGTERM, _exit_on_term)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.discard()
        finally:
            if self._previous_term is not None:
                signal.signal(signal.SIGTERM, self._previous_term)
                self._previous_term = None

    def path(self, final: Path) -> Path:
        """A new temp path for `final` (the caller writes it, e.g. with a ParquetWriter)."""
        final = Path(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        self.removed_stale += remove_stale_temps(final)
        # Ctrl-C / SIGTERM wait until the new file is on the list `discard` removes (a signal
        # between creating it and listing it would leave it behind).
        blocked = {signal.SIGINT, signal.SIGTERM}
        masking = threading.current_thread() is threading.main_thread() and hasattr(signal, "pthread_sigmask")
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, blocked) if masking else None
        try:
            fd, tmp = temp_file_beside(final)
            os.close(fd)
            self.files.append((Path(tmp), final))
        finally:
            if masking:
                signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        return Path(tmp)

    def open(self, final: Path, mode: str = "w") -> Any:
        """A file object writing `final`'s temp file (text: UTF-8, '\n' line ends)."""
        tmp = self.path(final)
        if "b" in mode:
            return open(tmp, mode)
        return open(tmp, mode, encoding="utf-8", newline="\n")

    def temp_of(self, final: Path) -> Path:
        for tmp, dest in self.files:
            if dest == Path(final):
                return tmp
        raise KeyError(final)

    def discard(self, final: Path | None = None) -> None:
        """Remove the temp file of `final` (every unpublished one if None)."""
        keep = []
        for tmp, dest in self.files:
            if final is None or dest == Path(final):
                try:
                    os.unlink(tmp)
                except FileNotFoundError:
                    pass
            else:
                keep.append((tmp, dest))
        self.files = keep

    def _rename_all(self) -> list[Path]:
        published = []
        for tmp, dest in self.files:
            os.replace(tmp, dest)
            published.append(dest)
        self.files = []
        return published

    def publish_files(self) -> list[Path]:
        """Rename every staged file into place without a catalog row (reports of a failed run)."""
        return self._rename_all()

    def publish(self, register: Callable[[Any], T], catalog: Any = None) -> T:
        """Register and publish as one step: `register(catalog)` writes the catalog rows inside one
        write transaction, the files are renamed into place, then it commits. On any failure the
        transaction rolls back and files already renamed are removed again. `catalog`: the one
        the command opened before doing its work (so a damaged catalog stops it first)."""
        from store.catalog import CatalogError, open_catalog

        published: list[Path] = []
        try:
            catalog = catalog if catalog is not None else open_catalog()
            with catalog.immediate():
                result = register(catalog)
                published = self._rename_all()
        except BaseException as exc:
            for dest in published:
                try:
                    os.unlink(dest)
                except FileNotFoundError:
                    pass
            self.discard()
            if isinstance(exc, CatalogError):
                raise OpenchatError(
                    f"{exc}; nothing was written (no output, no catalog entry): run the same "
                    f"command again when the catalog is free"
                ) from None
            raise
        return result


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def side_path(out: Path, tag: str) -> Path:
    """OUT.jsonl -> OUT.<tag>.jsonl (the dropped-records report and similar side files)."""
    return out.with_name(f"{out.name[: -len(out.suffix)] if out.suffix else out.name}.{tag}.jsonl")


def is_parquet(path: Path) -> bool:
    if path.suffix.lower() == ".parquet":
        return True
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == b"PAR1"
    except OSError:
        return False
