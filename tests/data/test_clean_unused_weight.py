"""`data clean --weight CLASS=W` for a class no kept conversation has (a typo: GPT-4 for the
class GPT4) is said in a warning; otherwise those replies silently keep --default-weight."""

from __future__ import annotations

import json

from tests.data.helpers import read_jsonl


def _dump(path):
    turns = [{"from": "human", "value": "What is the capital of France?"}, {"from": "gpt", "value": "It is Paris."}]
    records = [
        {"id": "a", "model": "gpt-4", "conversations": turns},
        {"id": "b", "model": "gpt-3.5-turbo", "conversations": [dict(t, value=t["value"] + " (b)") for t in turns]},
    ]
    path.write_text(json.dumps(records))
    return path


def test_a_weight_for_a_class_nobody_has_is_warned(cli, data_dir):
    raw = _dump(data_dir / "sharegpt.json")
    classes = ("--condition-from", "model", "--class", "gpt-4=GPT4", "--class", "*=GPT3")
    res = cli("data", "clean", raw, "-o", data_dir / "c.jsonl", *classes, "--weight", "GPT-4=1", "--weight", "GPT3=0.1")
    assert "--weight GPT-4=1: no kept conversation has class 'GPT-4' (classes: GPT3, GPT4)" in " ".join(
        res.stderr.split()
    )
    assert "GPT3=0.1" not in res.stderr  # that one was used
    weights = {c["id"]: c["messages"][1]["weight"] for c in read_jsonl(data_dir / "c.jsonl")}
    assert weights == {"a": 1.0, "b": 0.1}  # GPT4 kept the default weight, as warned


def test_weights_that_all_match_say_nothing(cli, data_dir):
    raw = _dump(data_dir / "sharegpt.json")
    classes = ("--condition-from", "model", "--class", "gpt-4=GPT4", "--class", "*=GPT3")
    res = cli("data", "clean", raw, "-o", data_dir / "c.jsonl", *classes, "--weight", "GPT4=1", "--weight", "GPT3=0.1")
    assert "warning" not in res.stderr
