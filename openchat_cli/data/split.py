"""`data split`: a reproducible train/eval split by conversation id.

Each conversation goes to eval when a stable hash of (seed, id) falls below the eval fraction:
the same seed gives the same split on any machine, streaming, and the parts of a conversation
split by `tokenize` (which share its id) always land on the same side.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openchat_cli.data.dedup import stable_hash
from openchat_cli.data.readers.jsonstream import parse_record
from openchat_cli.data.records import Location

SCALE = float(1 << 64)


def goes_to_eval(conversation_id: str, seed: int, fraction: float) -> bool:
    return stable_hash(f"{seed}\x00{conversation_id}") / SCALE < fraction


@dataclass
class SplitResult:
    train: int = 0
    eval: int = 0
    malformed: int = 0
    errors: list[str] = field(default_factory=list)


def split_jsonl(src: Path, train_fh, eval_fh, fraction: float, seed: int) -> SplitResult:
    """Copy each line of a conversations JSONL to train or eval (lines kept byte for byte)."""
    result = SplitResult()
    with open(src, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            text = raw.decode("utf-8", "surrogateescape")
            item = parse_record(text, len(text) - len(text.lstrip()), len(text), Location(str(src), 0, lineno))
            if item.error is not None:  # invalid JSON or UTF-8, a lone surrogate, nested too deep
                result.malformed += 1
                if len(result.errors) < 20:
                    result.errors.append(f"{src}:{lineno}: {item.error}")
                continue
            data = item.data
            cid = data["id"] if isinstance(data, dict) and data.get("id") is not None else None
            if cid is None:
                cid = f"{src.stem}:{lineno}"
            line = text.rstrip("\r\n") + "\n"
            if goes_to_eval(str(cid), seed, fraction):
                eval_fh.write(line)
                result.eval += 1
            else:
                train_fh.write(line)
                result.train += 1
    return result


def split_parquet(src: Path, train_path: Path, eval_path: Path, fraction: float, seed: int) -> SplitResult:
    """Rows of a tokenized Parquet file (sequences, or pairs by `pair_id`) to two files with the
    same schema and metadata."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from openchat_cli.tokenized import META_KIND, META_STATS, PAIRS_KIND, pairs_schema, schema

    pf = pq.ParquetFile(str(src))
    kv = {k: v for k, v in (pf.metadata.metadata or {}).items() if k != b"ARROW:schema"}
    pairs = kv.get(META_KIND.encode()) == PAIRS_KIND.encode()
    sch, id_column = (pairs_schema(), "pair_id") if pairs else (schema(), "conversation_id")
    result = SplitResult()
    tokens = {"train": 0, "eval": 0}
    writers = {
        name: pq.ParquetWriter(str(p), sch, store_schema=False, compression="zstd")
        for name, p in (("train", train_path), ("eval", eval_path))
    }
    try:
        for batch in pf.iter_batches(batch_size=4096):
            table = pa.Table.from_batches([batch]).cast(sch)
            ids = table.column(id_column).to_pylist()
            mask = pa.array([goes_to_eval(str(i), seed, fraction) for i in ids], type=pa.bool_())
            lengths = table.column("length").to_numpy()
            for name, m in (("eval", mask), ("train", pc.invert(mask))):
                part = table.filter(m)
                if part.num_rows:
                    writers[name].write_table(part)
                    tokens[name] += int(lengths[m.to_numpy(zero_copy_only=False)].sum())
            n_eval = sum(1 for x in mask.to_pylist() if x)
            result.eval += n_eval
            result.train += len(ids) - n_eval
        for name, writer in writers.items():
            rows = result.eval if name == "eval" else result.train
            if rows == 0:
                writer.write_table(sch.empty_table())
            meta = dict(kv)
            meta[META_STATS.encode()] = json.dumps(
                {
                    "pairs" if pairs else "sequences": rows,
                    "tokens": tokens[name],
                    "split": name,
                    "seed": seed,
                    "eval_fraction": fraction,
                    "split_from": str(src),
                }
            ).encode()
            writer.add_key_value_metadata({k.decode(): v.decode() for k, v in meta.items()})
    finally:
        for writer in writers.values():
            writer.close()
    return result


def counts(result: SplitResult) -> dict[str, Any]:
    return {"train": result.train, "eval": result.eval, "malformed": result.malformed}
