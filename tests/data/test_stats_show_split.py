"""`openchat data stats | show | split`."""

from __future__ import annotations

import pyarrow.parquet as pq

from openchat_cli.data.split import goes_to_eval
from openchat_cli.tokenized import read_metadata
from store.catalog import open_catalog
from tests.data.helpers import read_jsonl, sharegpt, write_jsonl


def conversations(n: int, prefix: str = "c") -> list[dict]:
    out = []
    for i in range(n):
        msgs = []
        for t in range(1 + i % 3):
            msgs += [
                {"role": "user", "content": f"question {i}.{t} " + "word " * (i % 7)},
                {"role": "assistant", "content": f"answer {i}.{t} " + "more " * (5 * (i % 11)), "weight": 1.0},
            ]
        out.append(
            {
                "id": f"{prefix}{i}",
                "source": "gen",
                "system": None,
                "condition": "GPT4" if i % 2 else "GPT3",
                "messages": msgs,
            }
        )
    return out


def test_stats_of_conversations_and_of_tokenized(cli, data_dir, tiny_model_dir):
    write_jsonl(data_dir / "c.jsonl", conversations(30))
    res = cli("data", "stats", data_dir / "c.jsonl", "--json").json()
    assert res["conversations"] == 30 and res["unit"] == "characters"
    assert res["turns"] == {"1": 10, "2": 10, "3": 10}
    assert res["by_condition"]["GPT4"]["conversations"] == 15
    assert sum(res["length"]["bins"].values()) == 30
    tok = cli("data", "stats", data_dir / "c.jsonl", "--model", tiny_model_dir, "--json").json()
    assert tok["unit"] == "tokens" and tok["length"]["total"] > 0

    cli(
        "data",
        "tokenize",
        data_dir / "c.jsonl",
        "--model",
        tiny_model_dir,
        "--max-len",
        "64",
        "-o",
        data_dir / "c.parquet",
    )
    st = cli("data", "stats", data_dir / "c.parquet", "--json").json()
    table = pq.read_table(data_dir / "c.parquet")
    assert st["kind"] == "tokenized" and st["sequences"] == table.num_rows
    assert st["conversations"] == 30 and st["split_conversations"] > 0
    assert st["tokens"] == sum(table.column("length").to_pylist())
    assert st["supervised_tokens"] == sum(1 for ws in table.column("weights").to_pylist() for w in ws if w > 0)
    assert st["template"] == "openchat_3.5" and st["max_len"] == 64
    human = cli("data", "stats", data_dir / "c.parquet").stdout
    assert "length histogram" in human and "█" in human and "GPT4" in human


def test_show_renders_conversations_and_sequences(cli, data_dir, tiny_model_dir):
    write_jsonl(data_dir / "c.jsonl", conversations(10))
    out = cli("data", "show", data_dir / "c.jsonl", "--id", "c3", "--id", "c5").stdout
    assert "c3" in out and "c5" in out and "question 3.0" in out and "c4" not in out
    assert len(cli("data", "show", data_dir / "c.jsonl", "-n", "4", "--json").json()) == 4
    a = cli("data", "show", data_dir / "c.jsonl", "-n", "2", "--random", "--seed", "1", "--json").json()
    b = cli("data", "show", data_dir / "c.jsonl", "-n", "2", "--random", "--seed", "1", "--json").json()
    assert a == b
    rendered = cli("data", "show", data_dir / "c.jsonl", "--id", "c1", "--template", "chatml").stdout
    assert "<|im_start|>user" in rendered
    res = cli("data", "show", data_dir / "c.jsonl", "--id", "nope", expect=2)
    assert "not found" in res.stderr
    cli("data", "tokenize", data_dir / "c.jsonl", "--model", tiny_model_dir, "-o", data_dir / "c.parquet")
    seq = cli("data", "show", data_dir / "c.parquet", "--id", "c2").stdout
    assert "GPT3 Assistant:" in seq and "supervised" in seq
    # Raw inputs can be shown too (any input format).
    write_jsonl(data_dir / "raw.jsonl", [sharegpt("r1", "Hello there, who are you?", "A helpful assistant.")])
    assert "helpful assistant" in cli("data", "show", data_dir / "raw.jsonl").stdout


def test_split_is_reproducible_and_registered(cli, data_dir, tiny_model_dir):
    write_jsonl(data_dir / "c.jsonl", conversations(200))
    res = cli("data", "split", data_dir / "c.jsonl", "--eval", "0.1", "--seed", "7", "--json").json()
    train, evals = read_jsonl(data_dir / "c.train.jsonl"), read_jsonl(data_dir / "c.eval.jsonl")
    assert len(train) + len(evals) == 200 and 5 <= len(evals) <= 40
    assert {c["id"] for c in evals} == {f"c{i}" for i in range(200) if goes_to_eval(f"c{i}", 7, 0.1)}
    assert sorted(train + evals, key=lambda c: int(c["id"][1:])) == conversations(200)
    again = cli(
        "data",
        "split",
        data_dir / "c.jsonl",
        "--eval",
        "0.1",
        "--seed",
        "7",
        "--force",
        "--train-out",
        data_dir / "t2.jsonl",
        "--eval-out",
        data_dir / "e2.jsonl",
    ).stdout
    assert "train" in again
    assert read_jsonl(data_dir / "e2.jsonl") == evals
    other = cli(
        "data",
        "split",
        data_dir / "c.jsonl",
        "--eval",
        "0.1",
        "--seed",
        "8",
        "--train-out",
        data_dir / "t3.jsonl",
        "--eval-out",
        data_dir / "e3.jsonl",
        "--json",
    ).json()
    assert read_jsonl(data_dir / "e3.jsonl") != evals and other["eval"]["records"] > 0
    catalog = open_catalog()
    row = catalog.get(res["eval"]["id"])
    assert row["format"] == "conversations" and row["meta"]["split"] == "eval"
    assert catalog.get(row["parent_id"])["path"] == str((data_dir / "c.jsonl").resolve())
    cli("data", "split", data_dir / "c.jsonl", "--eval", "1.5", expect=2)

    # Tokenized: split parts of one conversation stay on the same side, metadata is kept.
    cli(
        "data",
        "tokenize",
        data_dir / "c.jsonl",
        "--model",
        tiny_model_dir,
        "--max-len",
        "48",
        "-o",
        data_dir / "c.parquet",
    )
    cli("data", "split", data_dir / "c.parquet", "--eval", "0.2", "--seed", "1")
    tr = pq.read_table(data_dir / "c.train.parquet").to_pylist()
    ev = pq.read_table(data_dir / "c.eval.parquet").to_pylist()
    assert len(tr) + len(ev) == pq.read_metadata(data_dir / "c.parquet").num_rows
    assert not {r["conversation_id"] for r in tr} & {r["conversation_id"] for r in ev}
    assert any(r["part"] > 0 for r in tr + ev)
    meta = read_metadata(data_dir / "c.eval.parquet")
    assert meta["template"] == "openchat_3.5" and meta["max_len"] == 48
    assert meta["stats"]["sequences"] == len(ev) and meta["stats"]["split"] == "eval"
