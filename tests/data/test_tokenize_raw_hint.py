"""`data tokenize` given a raw dump instead of cleaned conversations: the error says to run
`data clean` first; an ordinary empty result does not."""

from __future__ import annotations

import json

from tests.data.helpers import write_jsonl


def test_a_raw_sharegpt_dump_points_at_data_clean(cli, data_dir, tiny_model_dir):
    raw = data_dir / "sharegpt.json"
    record = {"id": "a", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]}
    raw.write_text(json.dumps([record]))
    res = cli("data", "tokenize", raw, "--model", tiny_model_dir, "-o", data_dir / "t.parquet", expect=2)
    assert "no training sequence" in res.stderr
    assert f"openchat data clean {raw} -o clean.jsonl" in res.stderr
    assert "Traceback" not in res.output and not (data_dir / "t.parquet").exists()


def test_valid_conversations_with_nothing_to_train_on_get_no_such_hint(cli, data_dir, tiny_model_dir):
    conv = {
        "id": "z",
        "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello", "weight": 0}],
    }
    write_jsonl(data_dir / "c.jsonl", [conv])
    res = cli(
        "data", "tokenize", data_dir / "c.jsonl", "--model", tiny_model_dir, "-o", data_dir / "t.parquet", expect=2
    )
    assert "no training sequence" in res.stderr and "data clean" not in res.stderr
