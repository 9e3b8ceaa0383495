"""`data show`: render a few conversations (any input format) or tokenized sequences."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.panel import Panel
from rich.text import Text

from openchat_cli.data.formats import normalize
from openchat_cli.data.readers import ReadReport, read_inputs
from openchat_cli.data.records import Conv, Drop, Malformed

SEQUENCE_LEGEND = "[green]trained on[/] · [yellow]weight ≠ 1[/] · [dim]context[/]"
ROLE_STYLE = {"user": "bold cyan", "assistant": "bold green", "system": "bold magenta"}


def pick(items: Iterator[Any], key, ids: list[str], n: int, sample: bool, seed: int) -> list[Any]:
    """The items whose key is in `ids`, else the first `n`, else a seeded random sample of `n`."""
    if ids:
        wanted = set(ids)
        return [it for it in items if key(it) in wanted]
    if not sample:
        out = []
        for it in items:
            out.append(it)
            if len(out) >= n:
                break
        return out
    rng = random.Random(seed)
    reservoir: list[Any] = []
    for i, it in enumerate(items):  # reservoir sampling: one pass, n items in memory
        if i < n:
            reservoir.append(it)
        else:
            j = rng.randint(0, i)
            if j < n:
                reservoir[j] = it
    return reservoir


def conversations(paths: list[Path]) -> Iterator[Conv]:
    report = ReadReport()
    for item in read_inputs(paths, report):
        if item.error is not None:
            continue
        try:
            conv, _ = normalize(
                item.data, item.loc, Path(item.loc.file).name, "html" if item.container == "html" else "auto"
            )
        except (Malformed, Drop):
            continue
        yield conv


def render_conversation(conv: Conv, template: Any = None) -> Panel:
    title = f"[bold]{conv.id}[/]  [dim]{conv.source}[/]"
    if conv.condition:
        title += f"  condition [yellow]{conv.condition}[/]"
    if conv.model:
        title += f"  model {conv.model}"
    if template is not None:
        from openchat_cli.templates import Conversation

        c = Conversation.from_dict({"messages": conv.messages, "system": conv.system, "condition": conv.condition})
        return Panel(Text(template.render(c)), title=title + f"  [dim]as {template.name}[/]", title_align="left")
    parts: list[Any] = []
    if conv.system:
        parts.append(Text.assemble(("system\n", ROLE_STYLE["system"]), conv.system))
    for m in conv.messages:
        head = m["role"]
        if m["role"] == "assistant" and m.get("weight", 1.0) != 1.0:
            head += f"  (weight {m['weight']:g})"
        body = m["content"]
        if m.get("input"):
            body += "\n\n[input]\n" + m["input"]
        parts.append(Text.assemble((head + "\n", ROLE_STYLE.get(m["role"], "bold")), body))
    return Panel(Group(*_spaced(parts)), title=title, title_align="left")


def _spaced(parts: list[Any]) -> list[Any]:
    out: list[Any] = []
    for i, p in enumerate(parts):
        if i:
            out.append(Text(""))
        out.append(p)
    return out


def tokenized_rows(path: Path) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(str(path))
    for batch in pf.iter_batches(batch_size=1024):
        yield from batch.to_pylist()


def render_sequence(row: dict[str, Any], tokenizer: Any = None) -> Panel:
    """A training sequence: supervised tokens (weight > 0) in green, the rest dim."""
    ids, weights = row["input_ids"], row["weights"]
    supervised = sum(1 for w in weights if w > 0)
    title = f"[bold]{row['conversation_id']}[/] part {row['part']}  {row['length']} tokens, {supervised} supervised" + (
        f"  condition [yellow]{row['condition']}[/]" if row["condition"] else ""
    )
    text = Text()
    if tokenizer is None:
        for tok, w in zip(ids, weights):
            text.append(f"{tok} ", style="green" if w > 0 else "dim")
        return Panel(text, title=title, title_align="left")
    # Decode runs of equal weight together so multi-byte characters come out whole.
    start = 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or weights[i] != weights[start]:
            piece = tokenizer.decode(ids[start:i], skip_special_tokens=False)
            w = weights[start]
            style = "dim" if w == 0 else ("green" if w == 1 else "yellow")
            text.append(piece, style=style)
            start = i
    # The legend goes below, where a long title cannot push it off an 80-column panel.
    return Panel(text, title=title, title_align="left", subtitle=SEQUENCE_LEGEND, subtitle_align="right")


# -- preference pairs -----------------------------------------------------------------------------


def render_pair(pair: dict[str, Any]) -> Panel:
    """A pair from pairs JSONL: the shared prompt, then the chosen and the rejected reply."""
    title = f"[bold]{pair.get('id')}[/]  [dim]{pair.get('source') or ''}[/]"
    if pair.get("condition"):
        title += f"  condition [yellow]{pair['condition']}[/]"
    parts: list[Any] = []
    if pair.get("system"):
        parts.append(Text.assemble(("system\n", ROLE_STYLE["system"]), str(pair["system"])))
    for side, label, style in (
        ("prompt", "", None),
        ("chosen", "chosen ", "bold green"),
        ("rejected", "rejected ", "bold red"),
    ):
        for m in pair.get(side) or []:
            role = str(m.get("role"))
            parts.append(
                Text.assemble((f"{label}{role}\n", style or ROLE_STYLE.get(role, "bold")), str(m.get("content", "")))
            )
    return Panel(Group(*_spaced(parts)), title=title, title_align="left")


def render_pair_row(row: dict[str, Any], tokenizer: Any = None) -> Panel:
    """A tokenized pair: the shared prompt once, then each side's reply tokens (green: trained on)."""
    plen = row["prompt_length"]
    title = (
        f"[bold]{row['pair_id']}[/]  prompt {plen} tokens, chosen {len(row['chosen_ids'])}, rejected "
        f"{len(row['rejected_ids'])}" + (f"  condition [yellow]{row['condition']}[/]" if row["condition"] else "")
    )
    parts = [render_tokens(row["chosen_ids"][:plen], row["chosen_weights"][:plen], tokenizer)]
    for side, style in (("chosen", "bold green"), ("rejected", "bold red")):
        parts.append(Text(side, style=style))
        parts.append(render_tokens(row[f"{side}_ids"][plen:], row[f"{side}_weights"][plen:], tokenizer))
    return Panel(Group(*parts), title=title, title_align="left")


def render_tokens(ids: list[int], weights: list[float], tokenizer: Any = None) -> Text:
    """Token ids (or their text, decoded in runs of equal weight) styled by weight."""
    text = Text()
    if tokenizer is None:
        for tok, w in zip(ids, weights):
            text.append(f"{tok} ", style="green" if w > 0 else "dim")
        return text
    start = 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or weights[i] != weights[start]:
            w = weights[start]
            text.append(
                tokenizer.decode(ids[start:i], skip_special_tokens=False),
                style="dim" if w == 0 else ("green" if w == 1 else "yellow"),
            )
            start = i
    return text


def pairs_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """The pairs of a pairs JSONL file (unreadable lines skipped)."""
    import json

    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            try:
                data = json.loads(line)
            except ValueError:
                continue
            if isinstance(data, dict) and "chosen" in data and "rejected" in data:
                yield data
