"""Files and catalog plumbing shared by the `data` commands: inputs given as paths or catalog
ids, outputs written under a temporary name and renamed when complete."""

from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from openchat_cli.atomic import temp_file_beside
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


def dataset_id_for(path: Path, given: str | None = None) -> str | None:
    """The catalog id of a dataset file: the id it was given by, else the newest row for its path."""
    if given:
        return given
    from store.catalog import open_catalog

    row = open_catalog().find_by_path("datasets", path)
    return row["id"] if row else None


def ensure_registered(path: Path, fmt: str, given: str | None = None, **fields: Any) -> str:
    """The dataset id for `path`, registering it (as `fmt`) if the catalog does not know it yet,
    so every output has a parent in the lineage."""
    found = dataset_id_for(path, given)
    if found:
        return found
    from store.catalog import open_catalog

    return open_catalog().add_dataset(name=path.name, path=path, format=fmt, **fields)


@contextmanager
def atomic_output(path: Path, mode: str = "w") -> Iterator[Any]:
    """Write `path` through a temporary file in the same folder; renamed only on success."""
    with atomic_path(path) as tmp:
        if "b" in mode:
            fh = open(tmp, mode)
        else:
            fh = open(tmp, mode, encoding="utf-8", newline="\n")
        with fh:
            yield fh


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path next to `path` for writers that open files themselves (ParquetWriter)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file_beside(path)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


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
