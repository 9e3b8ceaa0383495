"""`data tokenize`: conversations JSONL to the trainer's Parquet (see openchat_cli.tokenized).

Conversations are read in chunks and encoded with one batched tokenizer call per chunk
(`ChatTemplate.encode_many`; the fast tokenizer spreads a batch over all cores). A conversation
longer than `max_len` is split at turn boundaries into parts that each start with a user turn
and repeat the BOS/system prefix; each part is re-encoded as a conversation of its own, so it is
exactly what the template produces. A turn that alone exceeds the window is truncated (counted).
"""

from __future__ import annotations

import itertools
import math
import os
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from openchat_cli.data.readers.jsonstream import parse_record
from openchat_cli.data.records import Location
from openchat_cli.templates import SYSTEM_ROLES, ChatTemplate, Conversation, Encoded

DEFAULT_CHUNK = 512
MAX_ERRORS = 20  # malformed-record locations kept for the report


@dataclass
class TokenizeStats:
    conversations: int = 0  # read and valid
    malformed: int = 0
    sequences: int = 0  # rows written
    split_conversations: int = 0  # conversations written as more than one part
    truncated: int = 0  # sequences cut at max_len (one turn longer than the window)
    dropped_no_targets: int = 0  # sequences with no supervised token (not written)
    tokens: int = 0
    supervised_tokens: int = 0
    longest: int = 0
    by_condition: Counter = field(default_factory=Counter)  # condition -> sequences
    errors: list[str] = field(default_factory=list)  # first few malformed locations

    def merge(self, other: TokenizeStats) -> None:
        for name in (
            "conversations",
            "malformed",
            "sequences",
            "split_conversations",
            "truncated",
            "dropped_no_targets",
            "tokens",
            "supervised_tokens",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.longest = max(self.longest, other.longest)
        self.by_condition.update(other.by_condition)
        self.errors += other.errors[: max(0, MAX_ERRORS - len(self.errors))]

    def to_dict(self) -> dict[str, Any]:
        return {
            "conversations": self.conversations,
            "malformed": self.malformed,
            "sequences": self.sequences,
            "split_conversations": self.split_conversations,
            "truncated": self.truncated,
            "dropped_no_targets": self.dropped_no_targets,
            "tokens": self.tokens,
            "supervised_tokens": self.supervised_tokens,
            "longest": self.longest,
            "by_condition": dict(self.by_condition),
        }


class BatchTokenizer:
    """The tokenizer as `ChatTemplate.encode_many` sees it, minus transformers' per-text overhead.

    `encode_many` calls `tokenizer(texts, add_special_tokens=False, split_special_tokens=True)`
    once per chunk on thousands of short pieces; transformers then builds a dict per piece
    (offsets, masks), which costs about as much as the tokenization itself. This adapter sends
    that call straight to the Rust tokenizer's batch encoder (same ids: the tests check it) and
    passes everything else through.
    """

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.backend = getattr(tokenizer, "_tokenizer", None)

    def __call__(self, texts, add_special_tokens: bool = True, split_special_tokens: bool = False, **kwargs):
        backend = self.backend
        if (
            backend is None
            or kwargs
            or add_special_tokens
            or not isinstance(texts, list)
            or not hasattr(backend, "encode_special_tokens")
        ):
            return self.tokenizer(
                texts, add_special_tokens=add_special_tokens, split_special_tokens=split_special_tokens, **kwargs
            )
        previous = backend.encode_special_tokens
        backend.encode_special_tokens = split_special_tokens
        try:
            encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
            encodings = encode(texts, add_special_tokens=False)
        finally:
            backend.encode_special_tokens = previous
        return {"input_ids": [e.ids for e in encodings]}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tokenizer, name)


@dataclass
class Row:
    input_ids: list[int]
    weights: list[float]
    conversation_id: str
    part: int
    condition: str | None


def validate(data: dict[str, Any]) -> str | None:
    """Why a record cannot be encoded (field and problem), or None."""
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        return "field 'messages': missing or empty"
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            return f"field 'messages[{i}]': expected an object"
        if m.get("role") not in ("user", "assistant", *SYSTEM_ROLES):
            return f"field 'messages[{i}].role': expected user or assistant, got {m.get('role')!r}"
        content = m.get("content")
        if not isinstance(content, (str, list)) and content is not None:
            return f"field 'messages[{i}].content': expected a string"
        w = m.get("weight")
        if w is not None and (isinstance(w, bool) or not isinstance(w, (int, float))):
            return f"field 'messages[{i}].weight': expected a number"
        if w is not None and not _finite_non_negative(w):
            return f"field 'messages[{i}].weight': must be a finite number, 0 or more, found {w!r}"
    for key in ("system", "condition"):
        if data.get(key) is not None and not isinstance(data[key], str):
            return f"field '{key}': expected a string"
    return None


def _finite_non_negative(value: float) -> bool:
    try:
        return math.isfinite(value) and value >= 0
    except OverflowError:  # an integer too large for a float
        return False


def parse_lines(lines: list[tuple[int, bytes]], name: str, stats: TokenizeStats) -> list[Conversation]:
    """Conversations from (line number, raw line) pairs; bad ones counted with file:line."""
    convs: list[Conversation] = []
    for lineno, raw in lines:
        text = raw.decode("utf-8", "surrogateescape")
        item = parse_record(text, len(text) - len(text.lstrip()), len(text), Location(name, 0, lineno))
        data, error = item.data, item.error  # invalid JSON / UTF-8, lone surrogates, too deep
        if error is None:
            if not isinstance(data, dict):
                error = f"expected an object, found {type(data).__name__}"
            else:
                error = validate(data)
        if error is None:
            try:
                conv = Conversation.from_dict(data)
            except (KeyError, TypeError, ValueError) as exc:
                error = f"cannot read conversation: {exc}"
            else:
                if not conv.messages:
                    error = "field 'messages': only system messages"
        if error is not None:
            stats.malformed += 1
            if len(stats.errors) < MAX_ERRORS:
                stats.errors.append(f"{name}:{lineno}: {error}")
            continue
        conv.id = str(conv.id) if conv.id is not None else f"{Path(name).stem}:{lineno}"
        stats.conversations += 1
        convs.append(conv)
    return convs


def line_chunks(path: Path, size: int) -> Iterator[list[tuple[int, bytes]]]:
    """Non-blank lines of a JSONL file with their numbers, `size` at a time."""
    chunk: list[tuple[int, bytes]] = []
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if raw.strip():
                chunk.append((lineno, raw))
                if len(chunk) >= size:
                    yield chunk
                    chunk = []
    if chunk:
        yield chunk


def turn_groups(conv: Conversation, enc: Encoded, max_len: int) -> list[tuple[int, int]]:
    """Message ranges [a, b) of the parts of a conversation that does not fit in `max_len`.

    Turns start at user messages; whole turns are packed greedily while prefix + turns fits.
    A turn that alone does not fit becomes a part of its own (to be truncated).
    """
    n = len(conv.messages)
    total = len(enc.input_ids)

    def at(i: int) -> int:
        return enc.message_starts[i] if i < n else total

    starts = [i for i, m in enumerate(conv.messages) if i == 0 or m.role == "user"]
    turns = list(zip(starts, starts[1:] + [n]))
    groups: list[tuple[int, int]] = []
    cur: tuple[int, int] | None = None
    for a, b in turns:
        if cur is not None and enc.prefix_len + at(b) - at(cur[0]) <= max_len:
            cur = (cur[0], b)
            continue
        if cur is not None:
            groups.append(cur)
        cur = (a, b)
    if cur is not None:
        groups.append(cur)
    return groups


def encode_chunk(
    template: ChatTemplate, tokenizer: Any, convs: list[Conversation], max_len: int, stats: TokenizeStats
) -> list[Row]:
    """Rows (training sequences) for a chunk of conversations, in input order."""
    if not isinstance(tokenizer, BatchTokenizer):
        tokenizer = BatchTokenizer(tokenizer)
    encoded = template.encode_many(tokenizer, convs)
    plan: list[tuple[Conversation, Encoded | None, list[Conversation]]] = []
    subs: list[Conversation] = []
    for conv, enc in zip(convs, encoded):
        if len(enc.input_ids) <= max_len:
            plan.append((conv, enc, []))
            continue
        parts = [
            Conversation(messages=conv.messages[a:b], system=conv.system, condition=conv.condition, id=conv.id)
            for a, b in turn_groups(conv, enc, max_len)
        ]
        plan.append((conv, None, parts))
        subs += parts
    sub_encoded = iter(template.encode_many(tokenizer, subs)) if subs else iter(())
    rows: list[Row] = []
    for conv, enc, parts in plan:
        encs = [enc] if enc is not None else [next(sub_encoded) for _ in parts]
        written = 0
        for e in encs:
            ids, weights = e.input_ids, e.weights
            if len(ids) > max_len:
                ids, weights = ids[:max_len], weights[:max_len]
                stats.truncated += 1
            supervised = sum(1 for w in weights if w > 0)
            if not supervised:
                stats.dropped_no_targets += 1
                continue
            rows.append(Row(ids, weights, conv.id, written, conv.condition))
            written += 1
            stats.sequences += 1
            stats.tokens += len(ids)
            stats.supervised_tokens += supervised
            stats.longest = max(stats.longest, len(ids))
            stats.by_condition[conv.condition or "(none)"] += 1
        if written > 1:
            stats.split_conversations += 1
    return rows


def rows_to_table(rows: list[Row]):
    """A pyarrow Table in the tokenized schema, built from flat numpy buffers."""
    import pyarrow as pa

    from openchat_cli.tokenized import schema

    lengths = np.fromiter((len(r.input_ids) for r in rows), dtype=np.int32, count=len(rows))
    offsets = np.zeros(len(rows) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    total = int(offsets[-1])
    ids = np.fromiter(itertools.chain.from_iterable(r.input_ids for r in rows), dtype=np.int32, count=total)
    weights = np.fromiter(itertools.chain.from_iterable(r.weights for r in rows), dtype=np.float32, count=total)
    off = pa.array(offsets, type=pa.int32())
    sch = schema()
    return pa.Table.from_arrays(
        [
            pa.ListArray.from_arrays(off, pa.array(ids, type=pa.int32())),
            pa.ListArray.from_arrays(off, pa.array(weights, type=pa.float32())),
            pa.array(lengths, type=pa.int32()),
            pa.array([r.conversation_id for r in rows], type=pa.string()),
            pa.array([r.part for r in rows], type=pa.int32()),
            pa.array([r.condition for r in rows], type=pa.string()),
        ],
        schema=sch,
    )


def process_lines(
    lines: list[tuple[int, bytes]], name: str, template: ChatTemplate, tokenizer: Any, max_len: int
) -> tuple[Any, TokenizeStats]:
    """One chunk of JSONL lines to (Arrow table or None, stats): the unit of work, in-process or in
    a worker."""
    stats = TokenizeStats()
    convs = parse_lines(lines, name, stats)
    rows = encode_chunk(template, tokenizer, convs, max_len, stats) if convs else []
    return (rows_to_table(rows) if rows else None), stats


# -- worker processes (--workers N) -------------------------------------------------------------
_WORKER: dict[str, Any] = {}
_INHERITED: dict[str, Any] = {}  # the parent's tokenizer, seen by forked workers without reloading


def _worker_init(model_dir: str, template_name: str, max_len: int, name: str) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core per worker; the pool is the parallelism
    from openchat_cli.templates import get_template

    tokenizer = _INHERITED.get(model_dir)
    if tokenizer is None:
        from openchat_cli.model_dir import load_tokenizer

        tokenizer = load_tokenizer(Path(model_dir))
    _WORKER.update(
        template=get_template(template_name), tokenizer=BatchTokenizer(tokenizer), max_len=max_len, name=name
    )


def _worker_run(lines: list[tuple[int, bytes]]) -> tuple[bytes | None, TokenizeStats, int]:
    import pyarrow as pa

    table, stats = process_lines(lines, _WORKER["name"], _WORKER["template"], _WORKER["tokenizer"], _WORKER["max_len"])
    if table is None:
        return None, stats, len(lines)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes(), stats, len(lines)


def _run_workers(
    src: Path,
    name: str,
    workers: int,
    model_dir: Path,
    template: ChatTemplate,
    max_len: int,
    chunk_size: int,
    tokenizer: Any = None,
) -> Iterator[tuple[Any, TokenizeStats, int]]:
    """Chunks encoded by a pool of processes, yielded in input order, at most 2 per worker in
    flight (so memory stays bounded however big the input).

    On Linux the workers are forked and share the already loaded tokenizer (the tokenizers
    library turns its own threads off in a forked child); elsewhere they are spawned and load it.
    """
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    import pyarrow as pa

    fork = "fork" in mp.get_all_start_methods() and os.name == "posix" and os.uname().sysname == "Linux"
    ctx = mp.get_context("fork" if fork else "spawn")
    if fork and tokenizer is not None:
        _INHERITED[str(model_dir)] = getattr(tokenizer, "tokenizer", tokenizer)
    with ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=_worker_init, initargs=(str(model_dir), template.name, max_len, name)
    ) as pool:
        pending: deque = deque()
        for lines in line_chunks(src, chunk_size):
            pending.append(pool.submit(_worker_run, lines))
            if len(pending) >= 2 * workers:
                yield _decode(pending.popleft().result(), pa)
        while pending:
            yield _decode(pending.popleft().result(), pa)


def _decode(result: tuple[bytes | None, TokenizeStats, int], pa) -> tuple[Any, TokenizeStats, int]:
    data, stats, n = result
    table = pa.ipc.open_stream(data).read_all() if data is not None else None
    return table, stats, n


def tokenize_file(
    src: Path,
    dest: Path,
    template: ChatTemplate,
    tokenizer: Any,
    max_len: int,
    metadata: Callable[[TokenizeStats], dict[bytes, bytes]],
    chunk_size: int = DEFAULT_CHUNK,
    on_progress: Callable[[int], None] | None = None,
    workers: int = 0,
    model_dir: Path | None = None,
    name: str | None = None,
) -> TokenizeStats:
    """Stream `src` (conversations JSONL) into the Parquet file `dest` (written in place: the
    caller hands a temporary path and renames it). `workers` > 0 encodes chunks in that many
    processes (each loads the tokenizer from `model_dir`); 0 encodes in this process, where the
    fast tokenizer still spreads each batch over all cores."""
    import pyarrow.parquet as pq

    from openchat_cli.tokenized import schema

    name = name or str(src)
    stats = TokenizeStats()
    sch = schema()
    if workers > 0:
        if model_dir is None:
            raise ValueError("workers need model_dir to load the tokenizer")
        results = _run_workers(src, name, workers, model_dir, template, max_len, chunk_size, tokenizer)
    else:
        fast = BatchTokenizer(tokenizer)
        results = (
            (*process_lines(lines, name, template, fast, max_len), len(lines)) for lines in line_chunks(src, chunk_size)
        )
    writer = pq.ParquetWriter(str(dest), sch, store_schema=False, compression="zstd")
    try:
        for table, chunk_stats, n in results:
            if table is not None:
                writer.write_table(table)
            stats.merge(chunk_stats)
            if on_progress:
                on_progress(n)
        if stats.sequences == 0:
            writer.write_table(sch.empty_table())
        writer.add_key_value_metadata(metadata(stats))
    finally:
        writer.close()
    return stats
