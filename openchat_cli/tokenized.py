"""The tokenized-dataset contract between `data tokenize` (writer) and `train` (reader).

One Parquet row per training sequence:
  input_ids: list<int32>        token ids, starting with the template's BOS (if any)
  weights: list<float32>        per-token loss weight, aligned with input_ids: weights[i] is the
                                weight of predicting input_ids[i] from input_ids[:i] (labels are
                                the input ids; the trainer shifts). 0 = not supervised.
  length: int32                 len(input_ids)
  conversation_id: string       id of the source conversation (split parts share it)
  part: int32                   index of this part when a long conversation was split
  condition: string             C-RLFT class / condition prefix, may be null
File (schema) metadata, all strings, under the keys below: template name, tokenizer hash,
max length, source dataset path and catalog id. The trainer refuses a file whose template or
tokenizer hash differs from the model's.

Tokenized preference pairs (`data tokenize` of pairs JSONL; read by `train --method dpo|rm`),
one row per pair:
  chosen_ids: list<int32>         the FULL chosen sequence: prompt (with the assistant prefix)
                                  then the chosen reply, exactly as the template encodes it
  chosen_weights: list<float32>   aligned like SFT `weights` (weights[i] is the weight of
                                  predicting chosen_ids[i]); nonzero only on the reply's
                                  supervised tokens (its text and end-of-turn token)
  rejected_ids, rejected_weights  the same for the rejected reply
  prompt_length: int32            tokens shared by both: chosen_ids[:prompt_length] ==
                                  rejected_ids[:prompt_length] is the prompt as encoded for
                                  generation (BOS, system, turns, assistant prefix); weights 0
  length: int32                   len(chosen_ids) + len(rejected_ids)
  pair_id: string                 id of the source pair
  condition: string               C-RLFT class / condition prefix, may be null
Each side is at most `max_len` tokens (the file's max length); see openchat_cli.data.tokenize_pairs
for how longer pairs are shortened. File metadata as above plus `openchat.kind` = "pairs"; SFT
files have no kind (read as "sft").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

META_TEMPLATE = "openchat.template"
META_TOKENIZER_HASH = "openchat.tokenizer_hash"
META_MAX_LEN = "openchat.max_len"
META_SOURCE = "openchat.source"  # JSON: {"path": ..., "dataset_id": ...}
META_STATS = "openchat.stats"  # JSON: counts (conversations, sequences, split, truncated, tokens)
META_KIND = "openchat.kind"  # "pairs" for preference pairs; absent for SFT sequences
PAIRS_KIND = "pairs"
SFT_KIND = "sft"

PAIR_COLUMNS = (
    "chosen_ids",
    "chosen_weights",
    "rejected_ids",
    "rejected_weights",
    "prompt_length",
    "length",
    "pair_id",
    "condition",
)


def schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("input_ids", pa.list_(pa.int32())),
            ("weights", pa.list_(pa.float32())),
            ("length", pa.int32()),
            ("conversation_id", pa.string()),
            ("part", pa.int32()),
            ("condition", pa.string()),
        ]
    )


def pairs_schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("chosen_ids", pa.list_(pa.int32())),
            ("chosen_weights", pa.list_(pa.float32())),
            ("rejected_ids", pa.list_(pa.int32())),
            ("rejected_weights", pa.list_(pa.float32())),
            ("prompt_length", pa.int32()),
            ("length", pa.int32()),
            ("pair_id", pa.string()),
            ("condition", pa.string()),
        ]
    )


def make_metadata(
    *,
    template: str,
    tokenizer_hash: str,
    max_len: int,
    source: dict[str, Any] | None = None,
    stats: dict[str, Any] | None = None,
    kind: str | None = None,
) -> dict[bytes, bytes]:
    """File metadata; `kind` "pairs" for preference pairs (SFT files carry no kind)."""
    meta = {
        META_TEMPLATE: template,
        META_TOKENIZER_HASH: tokenizer_hash,
        META_MAX_LEN: str(max_len),
        META_SOURCE: json.dumps(source or {}),
        META_STATS: json.dumps(stats or {}),
    }
    if kind is not None and kind != SFT_KIND:
        meta[META_KIND] = kind
    return {k.encode(): v.encode() for k, v in meta.items()}


def read_metadata(path: Path | str) -> dict[str, Any]:
    """Template, tokenizer hash, max length, source and stats of a tokenized Parquet file."""
    import pyarrow.parquet as pq

    raw = pq.read_schema(str(path)).metadata or {}
    meta = {k.decode(): v.decode() for k, v in raw.items()}
    out: dict[str, Any] = {
        "template": meta.get(META_TEMPLATE),
        "tokenizer_hash": meta.get(META_TOKENIZER_HASH),
        "max_len": int(meta[META_MAX_LEN]) if META_MAX_LEN in meta else None,
        "kind": meta.get(META_KIND, SFT_KIND),
    }
    for key, name in ((META_SOURCE, "source"), (META_STATS, "stats")):
        out[name] = json.loads(meta[key]) if key in meta else {}
    return out
