"""Reading a tokenized Parquet file (the `openchat_cli.tokenized` contract) for training.

Token ids and weights are kept as two flat numpy arrays plus row offsets (the Parquet list
layout), so a million sequences cost a few bytes per token and no Python objects per row.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from openchat_cli import tokenized
from openchat_cli.errors import OpenchatError


@dataclass
class TokenizedData:
    path: Path
    ids: np.ndarray  # int64 [total tokens]
    weights: np.ndarray  # float32 [total tokens]
    offsets: np.ndarray  # int64 [rows + 1]
    meta: dict[str, Any]

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.offsets[i], self.offsets[i + 1]
        return self.ids[a:b], self.weights[a:b]

    def supervised_ratio(self) -> float:
        return float(np.count_nonzero(self.weights)) / max(1, len(self.weights))


def resolve_data(ref: str) -> tuple[Path, str | None]:
    """A tokenized Parquet path from a path or a catalog dataset id; returns (path, dataset id)."""
    from store.catalog import looks_like_id, open_catalog

    text = str(ref)
    catalog = open_catalog()
    if looks_like_id(text) and not Path(text).exists():
        row = catalog.get(text)
        if catalog.table_of(row["id"]) != "datasets":
            raise OpenchatError(f"'{text}' is a {catalog.table_of(row['id'])[:-1]}, not a dataset")
        path, ds_id = Path(row["path"]), row["id"]
    else:
        path = Path(text).expanduser()
        found = catalog.find_by_path("datasets", path) if path.exists() else None
        ds_id = found["id"] if found else None
    if not path.is_file():
        raise OpenchatError(f"dataset '{text}' not found (expected a tokenized .parquet file or a ds-… id)")
    return path, ds_id


def read_meta_checked(path: Path, *, template: str, tokenizer_hash: str) -> dict[str, Any]:
    """The file's metadata, refusing data made with another template or tokenizer."""
    try:
        meta = tokenized.read_metadata(path)
    except Exception as exc:  # pyarrow raises several types for a non-Parquet file
        raise OpenchatError(
            f"{path}: not a readable Parquet file ({exc}); --data takes the tokenized .parquet that "
            "`openchat data tokenize` writes (conversations or pairs JSONL go through it first)"
        ) from None
    if not meta.get("template") or not meta.get("tokenizer_hash"):
        raise OpenchatError(
            f"{path}: not a tokenized dataset (no template / tokenizer hash in its "
            "metadata; make it with `openchat data tokenize`)"
        )
    if meta["template"] != template:
        raise OpenchatError(
            f"{path} was tokenized for template '{meta['template']}' but the model "
            f"speaks '{template}': re-tokenize it for this model"
        )
    if meta["tokenizer_hash"] != tokenizer_hash:
        raise OpenchatError(
            f"{path} was tokenized with another tokenizer (hash {meta['tokenizer_hash']}, "
            f"the model's is {tokenizer_hash}): re-tokenize it with this model"
        )
    return meta


def load(path: Path, meta: dict[str, Any] | None = None, vocab_size: int | None = None) -> TokenizedData:
    """Load ids and weights; checks the columns line up and ids fit the model's vocabulary."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(str(path), columns=["input_ids", "weights"])
    except Exception as exc:
        raise OpenchatError(f"{path}: cannot read input_ids/weights ({exc})") from None
    ids_col = table.column("input_ids").combine_chunks()
    w_col = table.column("weights").combine_chunks()
    if ids_col.null_count or w_col.null_count:
        raise OpenchatError(f"{path}: null input_ids or weights rows")
    offsets = np.asarray(ids_col.offsets, dtype=np.int64)
    if not np.array_equal(offsets, np.asarray(w_col.offsets, dtype=np.int64)):
        raise OpenchatError(f"{path}: input_ids and weights differ in length on some rows")
    base = offsets[0]
    ids = np.asarray(ids_col.values, dtype=np.int64)[base : offsets[-1]]
    weights = np.asarray(w_col.values, dtype=np.float32)[base : offsets[-1]]
    offsets = offsets - base
    if len(offsets) < 2:
        raise OpenchatError(f"{path}: no training sequences")
    if len(ids) and (ids.min() < 0 or (vocab_size is not None and ids.max() >= vocab_size)):
        raise OpenchatError(
            f"{path}: token id {int(ids.max())} is outside the model's vocabulary "
            f"({vocab_size}): re-tokenize it with this model"
        )
    if not np.isfinite(weights).all() or (weights < 0).any():
        raise OpenchatError(f"{path}: weights must be finite and non-negative")
    if not weights.any():
        raise OpenchatError(f"{path}: no token has a non-zero weight: nothing to train on")
    return TokenizedData(Path(path), ids, weights, offsets, meta or {})
