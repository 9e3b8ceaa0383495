"""`data clean`: raw dumps in, normalised conversations out, every drop counted with a reason.

Steps, in order (each switchable): read and normalise the record; model / source filter;
HTML to Markdown and page-chrome removal; structure checks; blocked words (drop); unwanted
phrases (reply kept with weight 0); condition class and weight (C-RLFT); exact dedup;
near-dup (MinHash).

Preference records (TRL, Anthropic HH, rm-static, WebGPT, SHP, GPT-4-LLM; see
openchat_cli.data.preference) become pairs and go through the same steps (pair_clean.py).
Conversations and pairs are written to separate outputs: the kind of the first record kept
goes to OUT, the other kind (if the input mixes them) to OUT.<kind>.jsonl (`KindSinks`).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from openchat_cli.data import htmlmd
from openchat_cli.data.dedup import ExactDedup, NearDedup, normalized_hash, normalized_text
from openchat_cli.data.formats import PAIR_FORMATS, normalize
from openchat_cli.data.pair_clean import clean_pair
from openchat_cli.data.preference import detect_pair, normalize_pairs
from openchat_cli.data.readers import ReadReport, expand_sources, read_file
from openchat_cli.data.readers.textcheck import printable
from openchat_cli.data.records import ALL_REASONS, SKIPPABLE, Conv, Drop, Malformed, Pair, RawItem
from openchat_cli.data.wordlists import DEFAULT_BLOCKED, DEFAULT_UNWANTED, Matcher, load_list
from openchat_cli.errors import OpenchatError
from openchat_cli.templates import join_system

# Built-in classes for --condition-from model: ShareGPT's `model` field values.
MODEL_CLASSES = [
    ("*gpt-4*", "GPT4"),
    ("*gpt4*", "GPT4"),
    ("*gpt-3.5*", "GPT3"),
    ("*gpt3*", "GPT3"),
    ("*gpt-3*", "GPT3"),
    ("*default*", "GPT3"),
    ("*text-davinci*", "GPT3"),
    ("*turbo*", "GPT3"),
]


@dataclass
class CleanOptions:
    format: str = "auto"
    html: str = "auto"  # auto | always | never
    skip_checks: tuple[str, ...] = ()
    trim_ends: bool = True  # trim a leading assistant / trailing user turn instead of dropping
    min_chars: int = 10
    blocked_words: Path | None = DEFAULT_BLOCKED  # None: step off
    unwanted_phrases: Path | None = DEFAULT_UNWANTED
    dedup: bool = True
    near_dup: bool = False
    near_dup_threshold: float = 0.85
    keep_models: tuple[str, ...] = ()
    keep_sources: tuple[str, ...] = ()
    condition_from: str | None = None  # model | source | None
    classes: tuple[tuple[str, str], ...] = ()  # (glob pattern, class)
    weights: dict[str, float] = field(default_factory=dict)
    default_weight: float = 1.0

    def describe(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "html": self.html,
            "skip_checks": list(self.skip_checks),
            "trim_ends": self.trim_ends,
            "min_chars": self.min_chars,
            "blocked_words": str(self.blocked_words) if self.blocked_words else None,
            "unwanted_phrases": str(self.unwanted_phrases) if self.unwanted_phrases else None,
            "dedup": self.dedup,
            "near_dup": self.near_dup,
            "near_dup_threshold": self.near_dup_threshold if self.near_dup else None,
            "keep_models": list(self.keep_models),
            "keep_sources": list(self.keep_sources),
            "condition_from": self.condition_from,
            "classes": [list(c) for c in self.classes],
            "weights": self.weights,
            "default_weight": self.default_weight,
        }


@dataclass
class CleanResult:
    read: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    fixes: Counter = field(default_factory=Counter)  # html_converted, trimmed, zero_weight_replies
    shapes: Counter = field(default_factory=Counter)
    conditions: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)  # reason -> first "location: detail"
    report: ReadReport = field(default_factory=ReadReport)
    content_hash: str | None = None  # of OUT (the first kind kept)
    kinds: Counter = field(default_factory=Counter)  # conversations | pairs -> records written
    content_hashes: dict[str, str] = field(default_factory=dict)  # kind -> sha256 of its output
    main_kind: str | None = None  # the kind written to OUT

    def counts(self) -> dict[str, Any]:
        return {
            "read": self.read,
            "kept": self.kept,
            "dropped_total": sum(self.dropped.values()),
            "kinds": dict(self.kinds),
            "dropped": {r: self.dropped[r] for r in ALL_REASONS if self.dropped.get(r)},
            "fixes": dict(self.fixes),
            "shapes": dict(self.shapes),
            "conditions": dict(self.conditions),
            "file_count": self.report.file_count,
            "files": _capped(self.report.files),
            "truncated": _capped(self.report.truncated),
            "warnings": _capped(self.report.warnings),
        }


def _capped(items: dict | list, limit: int = 50):
    """At most `limit` entries for the catalog row (a folder may hold a million pages)."""
    if len(items) <= limit:
        return dict(items) if isinstance(items, dict) else list(items)
    if isinstance(items, dict):
        return {**dict(list(items.items())[:limit]), "…": f"{len(items) - limit} more"}
    return list(items[:limit]) + [f"… {len(items) - limit} more"]


def parse_pairs(values: Iterable[str], flag: str, convert: Callable[[str], Any] = str) -> list[tuple[str, Any]]:
    """'KEY=VALUE' flags (the last '=' splits, so patterns may contain '=')."""
    out = []
    for value in values:
        key, sep, val = value.rpartition("=")
        if not sep or not key.strip() or not val.strip():
            raise OpenchatError(f"{flag} expects KEY=VALUE, got '{value}'")
        try:
            out.append((key.strip(), convert(val.strip())))
        except ValueError:
            raise OpenchatError(f"{flag} '{value}': '{val}' is not a valid value") from None
    return out


class Cleaner:
    """Applies the cleaning steps to one record at a time (state: dedup sets, counters)."""

    def __init__(self, options: CleanOptions):
        self.o = options
        self._trimmed = (0, 0)  # (leading assistant, trailing user) turns trimmed off this conversation
        unknown = [c for c in options.skip_checks if c not in SKIPPABLE]
        if unknown:
            raise OpenchatError(f"--skip-check {unknown[0]}: choose from {', '.join(SKIPPABLE)}")
        if options.html not in ("auto", "always", "never"):
            raise OpenchatError("--html must be auto, always or never")
        if options.condition_from not in (None, "model", "source"):
            raise OpenchatError("--condition-from must be model or source")
        if options.near_dup and not 0.0 < options.near_dup_threshold < 1.0:
            raise OpenchatError("--near-dup-threshold must be between 0 and 1 (e.g. 0.85)")
        for flag, value in [
            ("--default-weight", options.default_weight),
            *((f"--weight {cls}=", w) for cls, w in options.weights.items()),
        ]:
            if not math.isfinite(value) or value < 0:
                raise OpenchatError(
                    f"{flag}{value if flag.endswith('=') else ' ' + str(value)}: a weight must be "
                    f"a finite number, 0 or more"
                )
        if options.weights and not options.condition_from:
            raise OpenchatError("--weight needs --condition-from model|source to give conversations a class")
        self.skip = set(options.skip_checks)
        self.blocked = Matcher(load_list(options.blocked_words)) if options.blocked_words else None
        self.unwanted = (
            Matcher(load_list(options.unwanted_phrases), whole_words=False) if options.unwanted_phrases else None
        )
        self.exact = ExactDedup() if options.dedup else None
        self.near = NearDedup(options.near_dup_threshold) if options.near_dup else None
        self.result = CleanResult()

    # -- steps ----------------------------------------------------------------------------
    def _filter(self, conv: Conv) -> None:
        if self.o.keep_models:
            model = (conv.model or "").lower()
            if not any(_match(p, model) for p in self.o.keep_models):
                raise Drop("model_filtered", f"model {conv.model!r}")
        if self.o.keep_sources:
            if not any(_match(p, conv.source.lower()) for p in self.o.keep_sources):
                raise Drop("source_filtered", f"source {conv.source!r}")

    def _text(self, conv: Conv, shape: str) -> None:
        """HTML to Markdown and chrome removal; content trimmed."""
        sharegpt = shape in ("sharegpt", "html")
        for i, m in enumerate(conv.messages):
            text = m["content"]
            convert = self.o.html == "always" or (self.o.html == "auto" and htmlmd.looks_like_html(text))
            if convert and self.o.html != "never":
                try:
                    text = htmlmd.html_to_markdown(text)
                except RecursionError:
                    raise Malformed(
                        "HTML nested too deep to convert to Markdown (--html never keeps it as is)",
                        f"messages[{i}].content",
                    ) from None
                self.result.fixes["html_converted"] += 1
            elif sharegpt:
                text = htmlmd.strip_chrome(text)
            m["content"] = text.strip()
            if "input" in m:
                m["input"] = m["input"].strip()
                if not m["input"]:
                    del m["input"]
        if conv.system is not None:
            conv.system = conv.system.strip() or None

    def _structure(self, conv: Conv) -> None:
        msgs = conv.messages
        # Leading system messages become the conversation's system prompt (templates.join_system:
        # the same rule serve and the saved Jinja template apply).
        leading: list[str] = []
        while msgs and msgs[0]["role"] == "system":
            leading.append(msgs.pop(0)["content"])
        if leading:
            conv.system = join_system([conv.system, *leading]) or None
        if not msgs:
            raise Drop("empty", "no user or assistant messages")
        if any(m["role"] == "system" for m in msgs):
            if "misplaced_system" not in self.skip:
                i = next(i for i, m in enumerate(msgs) if m["role"] == "system")
                raise Drop("misplaced_system", f"message {i} is a system message")
            msgs[:] = [m for m in msgs if m["role"] != "system"]
        if "empty_message" not in self.skip:
            for i, m in enumerate(msgs):
                if not m["content"]:
                    raise Drop("empty_message", f"message {i} ({m['role']}) is empty")
        else:
            msgs[:] = [m for m in msgs if m["content"]]
            if not msgs:
                raise Drop("empty", "every message is empty")
        if self.o.trim_ends:
            # The split-off parts of long ShareGPT conversations start with a reply or end with a
            # question: the rest is still a conversation a trainer can use.
            leading = trailing = 0
            while msgs and msgs[0]["role"] == "assistant" and "leading_assistant" not in self.skip:
                msgs.pop(0)
                leading += 1
            while msgs and msgs[-1]["role"] == "user" and "trailing_user" not in self.skip:
                msgs.pop()
                trailing += 1
            if not msgs:
                raise Drop("one_turn", f"nothing left after trimming {leading + trailing} turn(s)")
            self._trimmed = (leading, trailing)  # counted in `process` once the conversation is kept
        if len(msgs) == 1 and "one_turn" not in self.skip:
            raise Drop("one_turn", f"only one {msgs[0]['role']} message")
        if msgs[0]["role"] == "assistant" and "leading_assistant" not in self.skip:
            raise Drop("leading_assistant", "first message is from the assistant")
        if msgs[-1]["role"] == "user" and "trailing_user" not in self.skip:
            raise Drop("trailing_user", "last message is from the user")
        if "non_alternating" not in self.skip:
            for i in range(1, len(msgs)):
                if msgs[i]["role"] == msgs[i - 1]["role"]:
                    raise Drop("non_alternating", f"messages {i - 1} and {i} are both {msgs[i]['role']}")
        if self.o.min_chars > 0 and "too_short" not in self.skip:
            total = sum(len(m["content"]) + len(m.get("input") or "") for m in msgs)
            if total < self.o.min_chars:
                raise Drop("too_short", f"{total} characters < --min-chars {self.o.min_chars}")

    def _words(self, conv: Conv) -> None:
        if self.blocked is not None:
            texts = [conv.system or ""] + [t for m in conv.messages for t in (m["content"], m.get("input", ""))]
            for text in texts:  # one at a time: a huge reply is not copied into a joined string
                word = self.blocked.search(text)
                if word:
                    raise Drop("blocked_word", f"contains '{word}'")

    def _weights(self, conv: Conv) -> None:
        cls = self._class(conv)
        conv.condition = cls if cls is not None else conv.condition
        class_weight = self.o.weights.get(cls, self.o.default_weight) if cls is not None else self.o.default_weight
        for m in conv.messages:
            if m["role"] != "assistant":
                m["weight"] = 0.0  # user turns are context, never trained on
                continue
            weight = float(m.get("weight", 1.0)) * class_weight
            if not math.isfinite(weight):
                raise Malformed(
                    f"weight {m.get('weight')} × class weight {class_weight} is not a finite number",
                    f"messages[{conv.messages.index(m)}].weight",
                )
            if self.unwanted is not None and weight != 0:
                phrase = self.unwanted.search(m["content"])
                if phrase:
                    weight = 0.0
                    self.result.fixes["zero_weight_replies"] += 1
            m["weight"] = weight
        if "no_trainable_reply" not in self.skip and not any(
            m["role"] == "assistant" and m["weight"] > 0 for m in conv.messages
        ):
            raise Drop("no_trainable_reply", "every assistant reply has weight 0")

    def _class(self, conv: Conv) -> str | None:
        if self.o.condition_from is None:
            return None
        key = conv.model if self.o.condition_from == "model" else conv.source
        if not key:
            return None
        low = key.lower()
        for pattern, cls in self.o.classes:
            if _match(pattern, low):
                return cls
        if self.o.condition_from == "model":
            for pattern, cls in MODEL_CLASSES:
                if fnmatch.fnmatchcase(low, pattern):
                    return cls
            return key
        return Path(key).name.split(".")[0]

    def _dedup(self, conv: Conv) -> None:
        if self.exact is None and self.near is None:
            return
        if self.near is None:
            # Exact only: hashed piece by piece, without a normalised copy of the text.
            if self.exact.check_and_add_hash(normalized_hash(conv.system, conv.messages)):
                raise Drop("duplicate", "same text as an earlier conversation")
            return
        text = normalized_text(conv.system, conv.messages)
        if self.exact is not None and self.exact.check_and_add(text):
            raise Drop("duplicate", "same text as an earlier conversation")
        if self.near.check_and_add(text):
            raise Drop("near_duplicate", f"similar to an earlier conversation (≥ {self.o.near_dup_threshold})")

    # -- driver ---------------------------------------------------------------------------
    def process(self, item: RawItem, source: str) -> Conv:
        """The cleaned conversation, or Drop / Malformed."""
        if item.error is not None:
            raise Malformed(item.error)
        forced = self.o.format
        if item.container == "html" and forced == "auto":
            forced = "html"
        conv, shape = normalize(item.data, item.loc, source, forced)
        self.result.shapes[shape] += 1
        self._trimmed = (0, 0)
        self._filter(conv)
        self._text(conv, shape)
        self._structure(conv)
        self._words(conv)
        self._weights(conv)
        self._dedup(conv)
        self._count_trims()
        return conv

    def process_any(self, item: RawItem, source: str) -> list[Conv | Pair | Drop | Malformed]:
        """What one record gives: a conversation, or the pairs of a preference record (a ranked
        record gives several), each cleaned or the Drop / Malformed that stopped it. Raises
        Drop / Malformed when the record as a whole cannot be used."""
        if item.error is not None:
            raise Malformed(item.error)
        data, forced = item.data, self.o.format
        shape = forced if forced in PAIR_FORMATS else None
        if shape is None and forced == "auto" and item.container != "html" and isinstance(data, dict):
            shape = detect_pair(data)
        if shape is None:
            return [self.process(item, source)]
        if not isinstance(data, dict):
            raise Malformed(f"expected an object, found {type(data).__name__}")
        self.result.shapes[shape] += 1
        out: list[Conv | Pair | Drop | Malformed] = []
        for pair in normalize_pairs(data, item.loc, source, shape):
            if isinstance(pair, Drop):
                out.append(pair)
                continue
            try:
                out.append(clean_pair(self, pair, shape))
            except (Drop, Malformed) as exc:
                out.append(exc)
        return out

    def _count_trims(self) -> None:
        """Trimmed turns are reported for kept conversations only (a trimmed part may still be a
        duplicate or blocked)."""
        leading, trailing = self._trimmed
        if leading or trailing:
            self.result.fixes["trimmed_conversations"] += 1
            if leading:
                self.result.fixes["trimmed_leading_assistant"] += leading
            if trailing:
                self.result.fixes["trimmed_trailing_user"] += trailing


def _match(pattern: str, value: str) -> bool:
    """Glob if the pattern has wildcards, else a case-insensitive substring."""
    pattern = pattern.lower()
    if any(ch in pattern for ch in "*?["):
        return fnmatch.fnmatchcase(value, pattern)
    return pattern in value


@dataclass
class DropRecord:
    id: str | None
    file: str
    line: int | None
    record: int
    reason: str
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "file": self.file,
            "line": self.line,
            "record": self.record,
            "reason": self.reason,
            "detail": self.detail,
        }


def _record_id(item: RawItem) -> str | None:
    if isinstance(item.data, dict):
        value = item.data.get("id", item.data.get("conversation_id"))
        if isinstance(value, (str, int)):
            return str(value)
    return None


class KindSinks:
    """Where kept records go: the first kind kept (conversations or pairs) to OUT, the other kind
    to a second file opened on first use by `open_other(kind)`; without `open_other` a record of
    the other kind is dropped (`malformed`, naming both kinds)."""

    def __init__(self, out_fh: BinaryIO, open_other: Callable[[str], BinaryIO] | None):
        self.out_fh = out_fh
        self.open_other = open_other
        self.main: str | None = None
        self.files: dict[str, BinaryIO] = {}
        self.digests: dict[str, Any] = {}

    def write(self, kind: str, data: bytes) -> None:
        if self.main is None:
            self.main = kind
            self.files[kind] = self.out_fh
        fh = self.files.get(kind)
        if fh is None:
            if self.open_other is None:
                raise Malformed(f"a {kind[:-1]} record in a run that writes {self.main}; clean them separately")
            fh = self.files[kind] = self.open_other(kind)
        fh.write(data)
        self.digests.setdefault(kind, hashlib.sha256()).update(data)


def run_clean(
    inputs: list[Path],
    out_fh: BinaryIO,
    dropped_fh: BinaryIO,
    options: CleanOptions,
    on_record: Callable[[], None] | None = None,
    open_other: Callable[[str], BinaryIO] | None = None,
) -> CleanResult:
    """Clean every record of `inputs`, writing kept conversations or pairs (JSONL) to `out_fh`
    and one line per dropped record to `dropped_fh`. Both are binary files opened by the caller;
    `open_other(kind)` opens the output for the other kind if the input mixes them (KindSinks).

    Whatever goes wrong with one record (a field of the wrong type, text that is not valid
    Unicode, nesting too deep, a value JSON cannot hold) drops that record with a reason and
    its location; the others are kept."""
    cleaner = Cleaner(options)
    result = cleaner.result
    sinks = KindSinks(out_fh, open_other)
    for path, source in expand_sources(inputs):
        for item in read_file(path, result.report):
            result.read += 1
            try:
                outcomes = cleaner.process_any(item, source)
            except (Drop, Malformed) as exc:
                outcomes = [exc]
            except (RecursionError, UnicodeError, ValueError, TypeError) as exc:
                # Not expected after the readers' checks; still one record's problem, not the run's.
                outcomes = [Malformed(f"cannot be cleaned: {type(exc).__name__}: {exc}")]
            for outcome in outcomes:
                _emit(result, sinks, dropped_fh, item, outcome)
            if on_record is not None:
                on_record()
    result.main_kind = sinks.main
    result.content_hashes = {kind: d.hexdigest() for kind, d in sinks.digests.items()}
    result.content_hash = result.content_hashes.get(sinks.main) if sinks.main else hashlib.sha256().hexdigest()
    return result


def _emit(
    result: CleanResult, sinks: KindSinks, dropped_fh: BinaryIO, item: RawItem, outcome: Conv | Pair | Drop | Malformed
) -> None:
    """Write one kept record to its kind's output, or one drop line."""
    pair_id = None
    if isinstance(outcome, (Conv, Pair)):
        pair_id = outcome.id if isinstance(outcome, Pair) else None
        kind = "pairs" if isinstance(outcome, Pair) else "conversations"
        try:
            sinks.write(kind, _jsonl(outcome.to_json()))
        except (ValueError, UnicodeError) as exc:
            outcome = Malformed(f"cannot be written: {type(exc).__name__}: {exc}")
        except Malformed as exc:
            outcome = exc
        else:
            result.kept += 1
            result.kinds[kind] += 1
            result.conditions[outcome.condition or "(none)"] += 1
            return
    reason = outcome.reason if isinstance(outcome, Drop) else "malformed"
    detail = outcome.detail if isinstance(outcome, Drop) else str(outcome)
    _drop(result, dropped_fh, item, reason, detail, pair_id)


def _jsonl(record: dict[str, Any]) -> bytes:
    """One JSONL line as UTF-8; ValueError for NaN/Infinity (not JSON), UnicodeError for text
    that is not valid Unicode."""
    return (json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")


def _drop(
    result: CleanResult, dropped_fh: BinaryIO, item: RawItem, reason: str, detail: str, rid: str | None = None
) -> None:
    detail = printable(detail)
    result.dropped[reason] += 1
    rid = rid if rid is not None else _record_id(item)
    rec = DropRecord(
        printable(rid) if rid is not None else None, item.loc.file, item.loc.line, item.loc.record, reason, detail
    )
    result.examples.setdefault(reason, f"{item.loc}: {detail}")
    dropped_fh.write((json.dumps(rec.to_json(), ensure_ascii=False) + "\n").encode("utf-8", "backslashreplace"))
