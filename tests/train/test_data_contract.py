"""The trainer reads what `openchat data tokenize` writes (the tokenized Parquet contract)."""

from __future__ import annotations

import json

from openchat_cli.model_dir import tokenizer_hash
from openchat_cli.templates import get_template
from openchat_cli.train.collate import pack
from openchat_cli.train.dataset import load, read_meta_checked, resolve_data
from tests.train.helpers import color_task


def test_reads_data_tokenize_output(cli, tiny_model_dir, tiny_tokenizer, tmp_path):
    convs = color_task(12, seed=9)
    source = tmp_path / "convs.jsonl"
    source.write_text(
        "".join(
            json.dumps(
                {
                    "id": c.id,
                    "source": "test",
                    "system": None,
                    "condition": None,
                    "messages": [{"role": m.role, "content": m.content, "weight": m.weight} for m in c.messages],
                }
            )
            + "\n"
            for c in convs
        )
    )
    made = cli("data", "tokenize", source, "--model", tiny_model_dir, "-o", tmp_path / "t.parquet", "--json").json()

    path, ds_id = resolve_data(made["id"])  # a catalog id works wherever a path does
    assert ds_id == made["id"] and path == tmp_path / "t.parquet"
    meta = read_meta_checked(path, template="openchat_3.5", tokenizer_hash=tokenizer_hash(tiny_tokenizer))
    data = load(path, meta, vocab_size=len(tiny_tokenizer))
    expected = get_template("openchat_3.5").encode_many(tiny_tokenizer, convs)
    assert len(data) == len(expected)
    for i, enc in enumerate(expected):
        ids, weights = data.row(i)
        assert ids.tolist() == enc.input_ids and weights.tolist() == enc.weights
    # Each assistant reply (and its end-of-turn token) is a scored target, nothing else is.
    batch = pack(data, [0])
    reply = tiny_tokenizer.decode(batch.labels.tolist())
    assert all(
        f"The {a} is" in reply for a in [m.content.split()[1] for m in convs[0].messages if m.role == "assistant"]
    )
    assert "Item" not in reply
