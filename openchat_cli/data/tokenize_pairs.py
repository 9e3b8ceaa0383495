"""`data tokenize` of preference pairs: pairs JSONL to the pairs Parquet (openchat_cli.tokenized).

Each pair becomes two full sequences, prompt + chosen and prompt + rejected, encoded by the
template exactly as SFT conversations are (`ChatTemplate.encode_many`, one batched call per
chunk), so `chosen_ids[:prompt_length]` is the prompt as the template encodes it for generation
(BOS, system, the prompt's turns, the assistant prefix) on both sides. Prompt turns never carry
weight (an assistant turn inside the prompt is context); reply turns keep their weight.

Longer than `max_len` (per side):
1. the prompt is cut at turn boundaries, like SFT splits: its oldest turns go (the BOS / system
   prefix stays, the prompt still starts with a user turn) until both sides fit, keeping at least
   the last user turn; the pair is re-encoded as a pair of its own (counted `shortened`);
2. if the last user turn and a reply still do not fit, both sides are cut at `max_len` (the
   reply loses its end; counted `truncated`), provided the prompt leaves room for a reply token;
3. else the pair is not written (`dropped_too_long`). A side with no supervised token is not
   written either (`dropped_no_targets`).
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from openchat_cli.data.readers.jsonstream import parse_record
from openchat_cli.data.records import Location
from openchat_cli.data.tokenize import MAX_ERRORS, BatchTokenizer, line_chunks
from openchat_cli.templates import ChatTemplate, Conversation, Encoded, Message, content_text

DEFAULT_CHUNK = 256  # pairs per batched tokenizer call (three conversations each)


@dataclass
class PairTokenizeStats:
    pairs: int = 0  # read and valid
    malformed: int = 0
    written: int = 0  # rows written
    shortened: int = 0  # pairs whose oldest prompt turns were cut to fit
    truncated: int = 0  # pairs whose sides were cut at max_len
    dropped_too_long: int = 0  # the last prompt turn alone leaves no room for a reply
    dropped_no_targets: int = 0  # a side without a supervised token
    tokens: int = 0
    supervised_tokens: int = 0
    longest: int = 0  # longest side
    by_condition: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "pairs",
            "pairs": self.pairs,
            "malformed": self.malformed,
            "written": self.written,
            "shortened": self.shortened,
            "truncated": self.truncated,
            "dropped_too_long": self.dropped_too_long,
            "dropped_no_targets": self.dropped_no_targets,
            "tokens": self.tokens,
            "supervised_tokens": self.supervised_tokens,
            "longest": self.longest,
            "by_condition": dict(self.by_condition),
        }


@dataclass
class PairInput:
    """One pair as the template sees it: prompt messages (weight 0) and two replies."""

    id: str
    prompt: list[Message]
    chosen: list[Message]
    rejected: list[Message]
    system: str | None = None
    condition: str | None = None

    def side(self, reply: list[Message], start: int = 0) -> Conversation:
        return Conversation(self.prompt[start:] + reply, self.system, self.condition, self.id)

    def prompt_only(self, start: int = 0) -> Conversation:
        return Conversation(self.prompt[start:], self.system, self.condition, self.id)


@dataclass
class PairRow:
    chosen_ids: list[int]
    chosen_weights: list[float]
    rejected_ids: list[int]
    rejected_weights: list[float]
    prompt_length: int
    pair_id: str
    condition: str | None


def is_pairs_record(data: Any) -> bool:
    """A line of pairs JSONL (what `data clean` writes for preference data)."""
    return isinstance(data, dict) and "chosen" in data and "rejected" in data and "prompt" in data


def _messages(value: Any, side: str) -> tuple[list[Message], str | None]:
    """Messages of one side (and a leading system message's text), or ValueError naming the field."""
    if not isinstance(value, list) or not value:
        raise ValueError(f"field '{side}': expected a non-empty list of messages")
    out, system = [], None
    for i, m in enumerate(value):
        where = f"{side}[{i}]"
        if not isinstance(m, dict):
            raise ValueError(f"field '{where}': expected an object")
        role = m.get("role")
        try:
            content = content_text(m.get("content"))
        except TypeError as exc:
            raise ValueError(f"field '{where}.content': {exc}") from None
        if role == "system" and side == "prompt" and not out and system is None:
            system = content
            continue
        if role not in ("user", "assistant"):
            raise ValueError(f"field '{where}.role': expected user or assistant, got {role!r}")
        w = m.get("weight", 1.0)
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not _finite_non_negative(w):
            raise ValueError(f"field '{where}.weight': must be a finite number, 0 or more, found {w!r}")
        inp = m.get("input") if isinstance(m.get("input"), str) else None
        out.append(Message(role, content, 0.0 if side == "prompt" else float(w), inp))
    if not out:
        raise ValueError(f"field '{side}': only a system message")
    return out, system


def _finite_non_negative(value: float) -> bool:
    try:
        return math.isfinite(value) and value >= 0
    except OverflowError:
        return False


def parse_pair(data: Any, fallback_id: str) -> PairInput:
    """A PairInput from one parsed line, or ValueError naming the field."""
    if not is_pairs_record(data):
        raise ValueError("expected a pair {prompt, chosen, rejected} (a conversation in a pairs file?)")
    prompt, system = _messages(data["prompt"], "prompt")
    chosen, _ = _messages(data["chosen"], "chosen")
    rejected, _ = _messages(data["rejected"], "rejected")
    if prompt[-1].role != "user":
        raise ValueError(f"field 'prompt[{len(prompt) - 1}].role': the prompt must end with a user turn")
    for side, msgs in (("chosen", chosen), ("rejected", rejected)):
        if msgs[0].role != "assistant":
            raise ValueError(f"field '{side}[0].role': a reply must start with an assistant turn")
    for key in ("system", "condition"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise ValueError(f"field '{key}': expected a string")
    pid = data.get("id")
    return PairInput(
        str(pid) if pid is not None else fallback_id,
        prompt,
        chosen,
        rejected,
        data.get("system") if data.get("system") is not None else system,
        data.get("condition"),
    )


def parse_pair_lines(lines: list[tuple[int, bytes]], name: str, stats: PairTokenizeStats) -> list[PairInput]:
    pairs = []
    for lineno, raw in lines:
        text = raw.decode("utf-8", "surrogateescape")
        item = parse_record(text, len(text) - len(text.lstrip()), len(text), Location(name, 0, lineno))
        error = item.error
        if error is None:
            try:
                pairs.append(parse_pair(item.data, f"{Path(name).stem}:{lineno}"))
                stats.pairs += 1
                continue
            except ValueError as exc:
                error = str(exc)
        stats.malformed += 1
        if len(stats.errors) < MAX_ERRORS:
            stats.errors.append(f"{name}:{lineno}: {error}")
    return pairs


def _cut_start(pair: PairInput, chosen: Encoded, rejected: Encoded, max_len: int) -> int:
    """The first prompt message to keep so both sides fit: the oldest user turn that makes them
    fit, else the last user turn (0: nothing to cut)."""
    users = [i for i, m in enumerate(pair.prompt) if m.role == "user" and i > 0]
    for start in users:
        if all(
            enc.prefix_len + len(enc.input_ids) - enc.message_starts[start] <= max_len for enc in (chosen, rejected)
        ):
            return start
    return users[-1] if users else 0


def encode_pairs(
    template: ChatTemplate, tokenizer: Any, pairs: list[PairInput], max_len: int, stats: PairTokenizeStats
) -> list[PairRow]:
    """Rows for a chunk of pairs, in input order (see the module doc for the length rule)."""
    if not isinstance(tokenizer, BatchTokenizer):
        tokenizer = BatchTokenizer(tokenizer)
    starts = [0] * len(pairs)
    encs = _encode(template, tokenizer, pairs, starts)
    redo = []
    for i, (pair, (c, r, _plen)) in enumerate(zip(pairs, encs)):
        if max(len(c.input_ids), len(r.input_ids)) > max_len:
            starts[i] = _cut_start(pair, c, r, max_len)
            if starts[i]:
                redo.append(i)
    if redo:
        for i, enc in zip(redo, _encode(template, tokenizer, [pairs[i] for i in redo], [starts[i] for i in redo])):
            encs[i] = enc
    rows = []
    for i, (pair, (c, r, plen)) in enumerate(zip(pairs, encs)):
        row = _row(pair, c, r, plen, max_len, stats, shortened=bool(starts[i]))
        if row is not None:
            rows.append(row)
    return rows


def _encode(
    template: ChatTemplate, tokenizer: Any, pairs: list[PairInput], starts: list[int]
) -> list[tuple[Encoded, Encoded, int]]:
    """(chosen, rejected, prompt length) for each pair, one batched tokenizer call. Each message is
    encoded on its own (templates.py), so the prompt for generation is the chosen side up to its
    first reply message plus the assistant prefix's tokens (`_generation_prefix`)."""
    sides = template.encode_many(
        tokenizer,
        [conv for pair, s in zip(pairs, starts) for conv in (pair.side(pair.chosen, s), pair.side(pair.rejected, s))],
    )
    prefix: dict[str | None, int] = {}  # condition -> assistant prefix tokens
    out = []
    for i, (pair, s) in enumerate(zip(pairs, starts)):
        if pair.condition not in prefix:
            prefix[pair.condition] = _generation_prefix(template, tokenizer, pair.condition)
        chosen = sides[2 * i]
        out.append((chosen, sides[2 * i + 1], chosen.message_starts[len(pair.prompt) - s] + prefix[pair.condition]))
    return out


def _generation_prefix(template: ChatTemplate, tokenizer: Any, condition: str | None) -> int:
    """Tokens of the assistant prefix that ends a prompt for generation, for one condition."""
    probe = Conversation([Message("user", "x")], None, condition)
    bare, with_prefix = (template.encode_many(tokenizer, [probe], add_generation_prompt=g)[0] for g in (False, True))
    return len(with_prefix.input_ids) - len(bare.input_ids)


def _row(
    pair: PairInput, c: Encoded, r: Encoded, plen: int, max_len: int, stats: PairTokenizeStats, shortened: bool
) -> PairRow | None:
    if max(len(c.input_ids), len(r.input_ids)) > max_len:
        if plen >= max_len:
            stats.dropped_too_long += 1
            return None
        stats.truncated += 1
    stats.shortened += shortened
    c_ids, c_w = c.input_ids[:max_len], c.weights[:max_len]
    r_ids, r_w = r.input_ids[:max_len], r.weights[:max_len]
    supervised = [sum(1 for w in ws if w > 0) for ws in (c_w, r_w)]
    if not all(supervised):
        stats.dropped_no_targets += 1
        return None
    if c_ids[:plen] != r_ids[:plen] or not any(c_w[plen:]) or any(c_w[:plen]) or any(r_w[:plen]):
        stats.malformed += 1
        if len(stats.errors) < MAX_ERRORS:
            stats.errors.append(f"pair {pair.id}: the template did not encode the prompt the same on both sides")
        return None
    stats.written += 1
    stats.tokens += len(c_ids) + len(r_ids)
    stats.supervised_tokens += sum(supervised)
    stats.longest = max(stats.longest, len(c_ids), len(r_ids))
    stats.by_condition[pair.condition or "(none)"] += 1
    return PairRow(c_ids, c_w, r_ids, r_w, plen, pair.id, pair.condition)


def rows_to_table(rows: list[PairRow]):
    """A pyarrow Table in the pairs schema."""
    import pyarrow as pa

    from openchat_cli.tokenized import pairs_schema

    def lists(ids_of: Callable[[PairRow], list], dtype) -> Any:
        lengths = np.fromiter((len(ids_of(r)) for r in rows), dtype=np.int32, count=len(rows))
        offsets = np.zeros(len(rows) + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.fromiter(itertools.chain.from_iterable(ids_of(r) for r in rows), dtype=dtype, count=int(offsets[-1]))
        arrow_type = pa.int32() if dtype == np.int32 else pa.float32()
        return pa.ListArray.from_arrays(pa.array(offsets, type=pa.int32()), pa.array(flat, type=arrow_type)), lengths

    c_ids, c_len = lists(lambda r: r.chosen_ids, np.int32)
    c_w, _ = lists(lambda r: r.chosen_weights, np.float32)
    r_ids, r_len = lists(lambda r: r.rejected_ids, np.int32)
    r_w, _ = lists(lambda r: r.rejected_weights, np.float32)
    return pa.Table.from_arrays(
        [
            c_ids,
            c_w,
            r_ids,
            r_w,
            pa.array([r.prompt_length for r in rows], type=pa.int32()),
            pa.array(c_len + r_len, type=pa.int32()),
            pa.array([r.pair_id for r in rows], type=pa.string()),
            pa.array([r.condition for r in rows], type=pa.string()),
        ],
        schema=pairs_schema(),
    )


def tokenize_pairs_file(
    src: Path,
    dest: Path,
    template: ChatTemplate,
    tokenizer: Any,
    max_len: int,
    metadata: Callable[[PairTokenizeStats], dict[bytes, bytes]],
    chunk_size: int = DEFAULT_CHUNK,
    on_progress: Callable[[int], None] | None = None,
    name: str | None = None,
) -> PairTokenizeStats:
    """Stream `src` (pairs JSONL) into the Parquet file `dest` (a temp path the caller renames)."""
    import pyarrow.parquet as pq

    from openchat_cli.tokenized import pairs_schema

    name = name or str(src)
    stats = PairTokenizeStats()
    fast = BatchTokenizer(tokenizer)
    sch = pairs_schema()
    writer = pq.ParquetWriter(str(dest), sch, store_schema=False, compression="zstd")
    try:
        for lines in line_chunks(src, chunk_size):
            pairs = parse_pair_lines(lines, name, stats)
            rows = encode_pairs(template, fast, pairs, max_len, stats) if pairs else []
            if rows:
                writer.write_table(rows_to_table(rows))
            if on_progress:
                on_progress(len(lines))
        if stats.written == 0:
            writer.write_table(sch.empty_table())
        writer.add_key_value_metadata(metadata(stats))
    finally:
        writer.close()
    return stats


def sniff_pairs(path: Path) -> bool:
    """True when the first readable line of a JSONL file is a pair (decides how to tokenize it)."""
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            text = raw.decode("utf-8", "surrogateescape")
            item = parse_record(text, len(text) - len(text.lstrip()), len(text), Location(str(path), 0, lineno))
            if item.error is None:
                return is_pairs_record(item.data)
            if lineno > 100:
                break
    return False
