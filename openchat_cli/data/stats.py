"""`data stats`: counts, turns and a length histogram of a conversations file (any input format)
or of a tokenized Parquet file, overall and by condition."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from openchat_cli.data.formats import normalize
from openchat_cli.data.readers import ReadReport, read_inputs
from openchat_cli.data.records import Drop, Malformed


@dataclass
class Histogram:
    """Counts in power-of-two bins: 0–32, 33–64, 65–128, … (upper edge inclusive, so a window
    of 2048 tokens fills the 1025–2048 bin, not the next one)."""

    counts: Counter = field(default_factory=Counter)
    total: int = 0
    n: int = 0
    max: int = 0

    @staticmethod
    def bin_of(value: int) -> int:
        return 5 if value <= 32 else math.ceil(math.log2(value))

    def add(self, value: int) -> None:
        self.counts[self.bin_of(value)] += 1
        self.total += value
        self.n += 1
        self.max = max(self.max, value)

    def add_many(self, values: Iterable[int]) -> None:
        for v in values:
            self.add(int(v))

    def rows(self) -> list[tuple[str, int]]:
        if not self.counts:
            return []
        out = []
        for b in range(min(self.counts), max(self.counts) + 1):
            lo = 0 if b == 5 else 2 ** (b - 1) + 1
            out.append((f"{lo}–{2**b}", self.counts.get(b, 0)))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "bins": dict(self.rows()),
            "mean": round(self.total / self.n, 1) if self.n else 0,
            "max": self.max,
            "total": self.total,
        }


def percentile(hist: Histogram, q: float) -> str:
    """Upper edge of the bin holding the q-th quantile (a bound, from the binned counts)."""
    if not hist.n:
        return "0"
    target, seen = q * hist.n, 0
    for label, count in hist.rows():
        seen += count
        if seen >= target:
            return "≤" + label.split("–")[1]
    return str(hist.max)


def conversation_stats(
    paths: list[Path], tokenizer: Any = None, template: Any = None, chunk: int = 256
) -> dict[str, Any]:
    """Stats of conversations in any readable input format (clean output or raw dumps)."""
    from openchat_cli.data.tokenize import BatchTokenizer
    from openchat_cli.templates import Conversation

    if tokenizer is not None:
        tokenizer = BatchTokenizer(tokenizer)
    report = ReadReport()
    conversations = malformed = messages = zero_weight = 0
    turns: Counter = Counter()
    by_condition: dict[str, dict[str, Any]] = defaultdict(lambda: {"conversations": 0, "hist": Histogram()})
    by_source: Counter = Counter()
    overall = Histogram()
    unit = "tokens" if tokenizer is not None else "characters"
    pending: list[tuple[str, Any]] = []

    def flush() -> None:
        encoded = template.encode_many(tokenizer, [c for _, c in pending])
        for (cond, _), enc in zip(pending, encoded):
            overall.add(len(enc.input_ids))
            by_condition[cond]["hist"].add(len(enc.input_ids))
        pending.clear()

    for item in read_inputs(paths, report):
        if item.error is not None:
            malformed += 1
            continue
        try:
            conv, _ = normalize(
                item.data, item.loc, Path(item.loc.file).name, "html" if item.container == "html" else "auto"
            )
        except (Malformed, Drop):
            malformed += 1
            continue
        conversations += 1
        cond = conv.condition or "(none)"
        by_condition[cond]["conversations"] += 1
        by_source[conv.source if conv.source in by_source or len(by_source) < 10_000 else "(other)"] += 1
        messages += len(conv.messages)
        turns[sum(1 for m in conv.messages if m["role"] == "user")] += 1
        zero_weight += sum(1 for m in conv.messages if m["role"] == "assistant" and m.get("weight", 1) == 0)
        if tokenizer is not None:
            pending.append(
                (
                    cond,
                    Conversation.from_dict(
                        {
                            "messages": [m for m in conv.messages if m["role"] != "system"],
                            "system": conv.system,
                            "condition": conv.condition,
                        }
                    ),
                )
            )
            if len(pending) >= chunk:
                flush()
        else:
            length = sum(len(m["content"]) + len(m.get("input") or "") for m in conv.messages)
            overall.add(length)
            by_condition[cond]["hist"].add(length)
    if pending:
        flush()
    return {
        "kind": "conversations",
        "unit": unit,
        "conversations": conversations,
        "malformed": malformed,
        "messages": messages,
        "zero_weight_replies": zero_weight,
        **length_fields(turns, overall, by_condition, "conversations"),
        "by_source": dict(by_source.most_common(20)),
        "warnings": report.warnings,
    }


def tokenized_stats(path: Path) -> dict[str, Any]:
    """Stats of a tokenized Parquet file, streamed by row group."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from openchat_cli.tokenized import read_metadata

    meta = read_metadata(path)
    pf = pq.ParquetFile(str(path))
    overall = Histogram()
    by_condition: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"sequences": 0, "supervised_tokens": 0, "hist": Histogram()}
    )
    parts: Counter = Counter()
    supervised = 0
    for batch in pf.iter_batches(columns=["length", "weights", "part", "condition"], batch_size=8192):
        lengths = batch.column("length").to_numpy()
        overall.add_many(lengths)
        conds = batch.column("condition").to_pylist()
        weights = batch.column("weights")
        parent = pc.list_parent_indices(weights).to_numpy()
        flat = pc.list_flatten(weights).to_numpy(zero_copy_only=False)
        per_row = np.bincount(parent[flat > 0], minlength=len(lengths))
        supervised += int(per_row.sum())
        for cond, length, s in zip(conds, lengths, per_row):
            slot = by_condition[cond or "(none)"]
            slot["sequences"] += 1
            slot["supervised_tokens"] += int(s)
            slot["hist"].add(int(length))
        parts.update(batch.column("part").to_pylist())
    return {
        "kind": "tokenized",
        "unit": "tokens",
        "sequences": overall.n,
        "conversations": parts.get(0, 0),
        "split_conversations": parts.get(1, 0),
        "tokens": overall.total,
        "supervised_tokens": supervised,
        "length": overall.to_dict(),
        "hist": overall,
        "template": meta["template"],
        "tokenizer_hash": meta["tokenizer_hash"],
        "max_len": meta["max_len"],
        "recorded": meta["stats"],
        "by_condition": {
            k: {
                "sequences": v["sequences"],
                "supervised_tokens": v["supervised_tokens"],
                "length": v["hist"].to_dict(),
                "hist": v["hist"],
            }
            for k, v in sorted(by_condition.items())
        },
    }


def render(stats: dict[str, Any], console, title: str) -> None:
    """Rich tables: summary, by condition, histogram with bars."""
    from rich.table import Table

    summary = Table(title=title, header_style="bold cyan", show_header=False)
    summary.add_column("", style="bold")
    summary.add_column("")
    skip = {"hist", "by_condition", "length", "turns", "by_source", "warnings", "recorded", "kind", "unit"}
    for key, value in stats.items():
        if key not in skip:
            summary.add_row(key.replace("_", " "), f"{value:,}" if isinstance(value, int) else str(value))
    length = stats["length"]
    summary.add_row(f"mean {stats['unit']}", f"{length['mean']:,}")
    summary.add_row(f"max {stats['unit']}", f"{length['max']:,}")
    summary.add_row(
        f"p50 / p90 / p99 {stats['unit']}", " / ".join(percentile(stats["hist"], q) for q in (0.5, 0.9, 0.99))
    )
    if stats.get("turns"):
        summary.add_row("user turns", ", ".join(f"{k}: {v:,}" for k, v in stats["turns"].items()))
    console.print(summary)

    if stats["by_condition"]:
        cols = ["condition"] + [k for k in next(iter(stats["by_condition"].values())) if k not in ("hist", "length")]
        t = Table(title="by condition", header_style="bold cyan")
        for c in cols + [f"mean {stats['unit']}", f"max {stats['unit']}"]:
            t.add_column(c)
        for cond, v in stats["by_condition"].items():
            t.add_row(cond, *[f"{v[c]:,}" for c in cols[1:]], f"{v['length']['mean']:,}", f"{v['length']['max']:,}")
        console.print(t)

    rows = stats["hist"].rows()
    if rows:
        peak = max(c for _, c in rows) or 1
        n = stats["hist"].n
        t = Table(title=f"length histogram ({stats['unit']})", header_style="bold cyan")
        t.add_column(stats["unit"], justify="right")
        t.add_column("count", justify="right")
        t.add_column("%", justify="right")
        t.add_column("")
        for label, count in rows:
            t.add_row(label, f"{count:,}", f"{100 * count / n:.1f}", "[green]" + "█" * round(40 * count / peak) + "[/]")
        console.print(t)


def length_fields(
    turns: Counter, overall: Histogram, by_condition: dict[str, dict[str, Any]], count: str
) -> dict[str, Any]:
    """What conversation and pair stats share: user turns per record, and the length histogram
    overall and per condition (each condition's `count` of records beside it)."""
    return {
        "turns": {str(k): turns[k] for k in sorted(turns)},
        "length": overall.to_dict(),
        "hist": overall,
        "by_condition": {
            k: {count: v[count], "length": v["hist"].to_dict(), "hist": v["hist"]}
            for k, v in sorted(by_condition.items())
        },
    }


def jsonable(stats: dict[str, Any]) -> dict[str, Any]:
    """Stats without the Histogram objects (for --json and the catalog)."""
    out = {k: v for k, v in stats.items() if k != "hist"}
    out["by_condition"] = {
        k: {kk: vv for kk, vv in v.items() if kk != "hist"} for k, v in stats["by_condition"].items()
    }
    return out


# -- preference pairs -----------------------------------------------------------------------------


def pair_stats(path: Path) -> dict[str, Any]:
    """Stats of a pairs JSONL (characters: prompt, chosen and rejected; prompt user turns)."""
    from openchat_cli.data.show import pairs_jsonl

    overall = Histogram()
    by_condition: dict[str, dict[str, Any]] = defaultdict(lambda: {"pairs": 0, "hist": Histogram()})
    turns: Counter = Counter()
    chars = {"prompt": 0, "chosen": 0, "rejected": 0}
    chosen_longer = pairs = 0
    for pair in pairs_jsonl(path):
        sizes = {
            side: sum(len(str(m.get("content", ""))) for m in pair.get(side) or [] if isinstance(m, dict))
            for side in chars
        }
        pairs += 1
        for side, n in sizes.items():
            chars[side] += n
        chosen_longer += sizes["chosen"] > sizes["rejected"]
        turns[sum(1 for m in pair.get("prompt") or [] if isinstance(m, dict) and m.get("role") == "user")] += 1
        total = sum(sizes.values())
        overall.add(total)
        slot = by_condition[pair.get("condition") or "(none)"]
        slot["pairs"] += 1
        slot["hist"].add(total)
    return {
        "kind": "pairs",
        "unit": "characters",
        "pairs": pairs,
        **{f"mean_{side}_characters": round(n / pairs, 1) if pairs else 0 for side, n in chars.items()},
        "chosen_longer": chosen_longer,
        **length_fields(turns, overall, by_condition, "pairs"),
    }


def tokenized_pairs_stats(path: Path) -> dict[str, Any]:
    """Stats of a tokenized pairs Parquet file (length = chosen + rejected tokens), by row group."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from openchat_cli.tokenized import read_metadata

    meta = read_metadata(path)
    overall = Histogram()
    by_condition: dict[str, dict[str, Any]] = defaultdict(lambda: {"pairs": 0, "hist": Histogram()})
    supervised = prompt_tokens = 0
    for batch in pq.ParquetFile(str(path)).iter_batches(
        columns=["length", "prompt_length", "chosen_weights", "rejected_weights", "condition"], batch_size=8192
    ):
        lengths = batch.column("length").to_numpy()
        overall.add_many(lengths)
        prompt_tokens += int(batch.column("prompt_length").to_numpy().sum())
        for side in ("chosen_weights", "rejected_weights"):
            flat = pc.list_flatten(batch.column(side)).to_numpy(zero_copy_only=False)
            supervised += int((flat > 0).sum())
        for cond, length in zip(batch.column("condition").to_pylist(), lengths):
            slot = by_condition[cond or "(none)"]
            slot["pairs"] += 1
            slot["hist"].add(int(length))
    return {
        "kind": "tokenized-pairs",
        "unit": "tokens",
        "pairs": overall.n,
        "tokens": overall.total,
        "supervised_tokens": supervised,
        "mean_prompt_tokens": round(prompt_tokens / overall.n, 1) if overall.n else 0,
        "length": overall.to_dict(),
        "hist": overall,
        "template": meta["template"],
        "tokenizer_hash": meta["tokenizer_hash"],
        "max_len": meta["max_len"],
        "recorded": meta["stats"],
        "by_condition": {
            k: {"pairs": v["pairs"], "length": v["hist"].to_dict(), "hist": v["hist"]}
            for k, v in sorted(by_condition.items())
        },
    }
