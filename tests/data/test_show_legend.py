"""`data show` on a tokenized file: the colour legend stays whole on an 80-column terminal,
however long the sequence's title (it used to be cut off after "green: trained on, di")."""

from __future__ import annotations

from rich.console import Console

from openchat_cli.data.show import render_sequence


def test_the_legend_is_whole_at_80_columns(tiny_tokenizer):
    ids = tiny_tokenizer("The answer is 19.")["input_ids"]
    row = {
        "input_ids": ids,
        "weights": [0.0] * 2 + [1.0] * (len(ids) - 3) + [0.5],
        "conversation_id": "sharegpt-conversation-with-a-long-id-0123456789",
        "part": 0,
        "length": len(ids),
        "condition": "GPT4 Correct",
    }
    console = Console(width=80, record=True, color_system=None)
    console.print(render_sequence(row, tiny_tokenizer))
    text = console.export_text()
    assert "trained on · weight ≠ 1 · context" in text
    assert max(len(line) for line in text.splitlines()) <= 80
