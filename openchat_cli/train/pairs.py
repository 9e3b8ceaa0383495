"""Reading tokenized preference pairs (what `data tokenize` writes for pairs) for DPO and RM.

The contract, one Parquet row per pair:
  chosen_ids, rejected_ids: list<int32>          each a FULL sequence (prompt + reply)
  chosen_weights, rejected_weights: list<float32> aligned like SFT `weights` (weights[i] is the
                                                  weight of predicting token i), nonzero only on
                                                  the reply's supervised tokens
  prompt_length: int32, length: int32 (both lengths), pair_id: string, condition: string|null
File metadata as SFT data (template, tokenizer hash, max length) plus kind "pairs".

Pairs are held as one `TokenizedData` whose row 2i is pair i's chosen sequence and row 2i + 1
its rejected one, so the SFT packer lays them out; the sampler packs whole pairs (a pair's two
lengths summed), which keeps both sequences of a pair in one micro-batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from openchat_cli.errors import OpenchatError
from openchat_cli.train.dataset import TokenizedData

META_KIND = "openchat.kind"
PAIRS_KIND = "pairs"
PAIR_COLUMNS = ("chosen_ids", "chosen_weights", "rejected_ids", "rejected_weights")


def file_kind(path: Path) -> str:
    """'pairs' for a tokenized pairs file, 'sft' for a conversations one."""
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(str(path))
    except Exception as exc:  # pyarrow raises several types for a non-Parquet file
        raise OpenchatError(f"{path}: not a readable Parquet file ({exc})") from None
    raw = {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}
    kind = raw.get(META_KIND) or raw.get("kind")
    if kind == PAIRS_KIND or (kind is None and "chosen_ids" in schema.names):
        return PAIRS_KIND
    return "sft"


def pair_lengths(data: TokenizedData) -> np.ndarray:
    """Tokens per pair (chosen + rejected): what the sampler packs."""
    lengths = data.lengths
    return lengths[0::2] + lengths[1::2]


def pair_rows(pairs: np.ndarray) -> np.ndarray:
    """Sequence rows of the given pairs, each pair's chosen then rejected."""
    pairs = np.asarray(pairs, dtype=np.int64)
    return np.stack([2 * pairs, 2 * pairs + 1], axis=1).reshape(-1)


def load_pairs(path: Path, meta: dict[str, Any] | None = None, vocab_size: int | None = None) -> TokenizedData:
    """Chosen and rejected sequences interleaved (row 2i chosen, 2i + 1 rejected), checked:
    columns present and aligned, ids inside the vocabulary, each side with something to score."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(str(path), columns=list(PAIR_COLUMNS))
    except Exception as exc:
        raise OpenchatError(f"{path}: cannot read preference pairs ({', '.join(PAIR_COLUMNS)}): {exc}") from None
    if table.num_rows == 0:
        raise OpenchatError(f"{path}: no preference pairs")
    cols = {name: table.column(name).combine_chunks() for name in PAIR_COLUMNS}
    for name, col in cols.items():
        if col.null_count:
            row = next(i for i, v in enumerate(col.is_null().to_pylist()) if v)
            raise OpenchatError(f"{path}: pair {row}: {name} is null")
    sides = []
    for side in ("chosen", "rejected"):
        ids_col, w_col = cols[f"{side}_ids"], cols[f"{side}_weights"]
        offsets = np.asarray(ids_col.offsets, dtype=np.int64)
        w_offsets = np.asarray(w_col.offsets, dtype=np.int64)
        lengths, w_lengths = np.diff(offsets), np.diff(w_offsets)
        bad = np.flatnonzero(lengths != w_lengths)
        if len(bad):
            raise OpenchatError(
                f"{path}: pair {int(bad[0])}: {side}_ids has {int(lengths[bad[0]])} tokens but "
                f"{side}_weights {int(w_lengths[bad[0]])}"
            )
        ids = np.asarray(ids_col.values, dtype=np.int64)[offsets[0] : offsets[-1]]
        weights = np.asarray(w_col.values, dtype=np.float32)[w_offsets[0] : w_offsets[-1]]
        if len(ids) and (ids.min() < 0 or (vocab_size is not None and ids.max() >= vocab_size)):
            raise OpenchatError(
                f"{path}: {side}_ids holds token id {int(ids.max())}, outside the model's "
                f"vocabulary ({vocab_size}): re-tokenize the pairs with this model"
            )
        if not np.isfinite(weights).all() or (weights < 0).any():
            raise OpenchatError(f"{path}: {side}_weights must be finite and non-negative")
        local = offsets - offsets[0]
        nonzero = np.concatenate([[0], np.cumsum(weights != 0)])
        scored = nonzero[local[1:]] - nonzero[np.minimum(local[:-1] + 1, local[1:])]  # the first token predicts nothing
        empty = np.flatnonzero((lengths < 2) | (np.asarray(scored) == 0))
        if len(empty):
            raise OpenchatError(
                f"{path}: pair {int(empty[0])}: the {side} reply has no token with a non-zero "
                f"weight after the first (nothing to score)"
            )
        sides.append((ids, weights, lengths))
    (c_ids, c_w, c_len), (r_ids, r_w, r_len) = sides
    lengths = np.stack([c_len, r_len], axis=1).reshape(-1)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    # Gather both sides into one interleaved layout: output row k starts at `starts[k]` of the
    # concatenated (chosen, rejected) arrays.
    starts = np.stack(
        [np.concatenate([[0], np.cumsum(c_len)[:-1]]), len(c_ids) + np.concatenate([[0], np.cumsum(r_len)[:-1]])],
        axis=1,
    ).reshape(-1)
    index = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])
    ids = np.concatenate([c_ids, r_ids])[index]
    weights = np.concatenate([c_w, r_w])[index]
    return TokenizedData(Path(path), ids, weights, offsets, {**(meta or {}), "kind": PAIRS_KIND})
