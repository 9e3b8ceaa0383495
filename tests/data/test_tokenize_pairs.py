"""`openchat data tokenize` of preference pairs: token-for-token agreement with the model's chat
template (Jinja, through transformers), the pairs Parquet contract, the max-length rules."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from openchat_cli.data.tokenize_pairs import PairInput, PairTokenizeStats, encode_pairs
from openchat_cli.templates import Conversation, Message, get_template
from openchat_cli.tokenized import PAIR_COLUMNS, read_metadata
from store.catalog import open_catalog
from tests.data.helpers import read_jsonl, write_jsonl

FILES = Path(__file__).parent / "preference"


def as_openai(system, messages) -> list[dict]:
    return ([{"role": "system", "content": system}] if system else []) + [
        {"role": m["role"], "content": m["content"]} for m in messages
    ]


def jinja_ids(tokenizer, template, system, messages, condition, generation=False) -> list[int]:
    tokenizer.chat_template = template.jinja()
    kwargs = {"condition": condition} if condition else {}
    return list(
        tokenizer.apply_chat_template(
            as_openai(system, messages), tokenize=True, return_dict=False, add_generation_prompt=generation, **kwargs
        )
    )


@pytest.mark.parametrize("template_name", ["openchat_3.5", "chatml"])
def test_pairs_agree_with_the_chat_template(cli, tiny_model_dir, data_dir, template_name):
    from transformers import AutoTokenizer

    pairs_path = data_dir / "pairs.jsonl"
    cleaned = cli(
        "data",
        "clean",
        FILES / "trl.jsonl",
        FILES / "hh-rlhf.jsonl",
        FILES / "rm-static.jsonl",
        "-o",
        pairs_path,
        "--min-chars",
        "0",
        "--condition-from",
        "source",
        "--class",
        "trl*=GPT3",
        "--json",
    ).json()
    out = data_dir / "pairs.parquet"
    res = cli(
        "data", "tokenize", pairs_path, "-m", tiny_model_dir, "--template", template_name, "-o", out, "--json"
    ).json()
    records = read_jsonl(pairs_path)
    assert res["kind"] == "pairs" and res["stats"]["written"] == len(records) == 9

    table = pq.read_table(out)
    assert tuple(table.schema.names) == PAIR_COLUMNS
    assert str(table.schema.field("chosen_ids").type) == "list<element: int32>"
    assert str(table.schema.field("chosen_weights").type) == "list<element: float>"
    meta = read_metadata(out)
    assert meta["kind"] == "pairs" and meta["template"] == template_name and meta["max_len"] == res["max_len"]

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    template = get_template(template_name)
    for row, rec in zip(table.to_pylist(), records):
        assert row["pair_id"] == rec["id"] and row["condition"] == rec["condition"]
        plen = row["prompt_length"]
        assert row["length"] == len(row["chosen_ids"]) + len(row["rejected_ids"])
        assert (
            row["chosen_ids"][:plen]
            == row["rejected_ids"][:plen]
            == jinja_ids(tokenizer, template, rec["system"], rec["prompt"], rec["condition"], generation=True)
        )
        for side in ("chosen", "rejected"):
            ids, weights = row[f"{side}_ids"], row[f"{side}_weights"]
            assert ids == jinja_ids(tokenizer, template, rec["system"], rec["prompt"] + rec[side], rec["condition"])
            # weights exactly as an SFT row of the same conversation whose prompt turns weigh 0
            conv = Conversation(
                [Message(m["role"], m["content"], 0.0) for m in rec["prompt"]]
                + [Message(m["role"], m["content"], m["weight"]) for m in rec[side]],
                rec["system"],
                rec["condition"],
            )
            assert weights == template.encode(tokenizer, conv).weights
            assert not any(weights[:plen]) and sum(w > 0 for w in weights[plen:]) > 0
            assert len(weights) == len(ids)

    cat = open_catalog()
    row = cat.get(res["id"])
    assert row["format"] == "tokenized-pairs" and row["parent_id"] == cleaned["id"]
    assert row["num_records"] == 9 and row["meta"]["kind"] == "pairs"


def _pair(prompt_turns: int, reply_words: int, pid: str = "p") -> PairInput:
    prompt = []
    for i in range(prompt_turns):
        prompt.append(Message("user", f"question {i} " + "what is the sea " * 3, 0.0))
        if i < prompt_turns - 1:
            prompt.append(Message("assistant", f"answer {i} " + "the sea is blue " * 3, 0.0))
    return PairInput(
        pid,
        prompt,
        [Message("assistant", "hello " * reply_words)],
        [Message("assistant", "no " * (reply_words // 2 + 1))],
        system="be brief",
    )


def test_max_len_cuts_oldest_prompt_turns_then_truncates_then_drops(tiny_tokenizer):
    template = get_template("openchat_3.5")
    pairs = [_pair(1, 5, "fits"), _pair(4, 5, "cut"), _pair(1, 400, "long-reply"), _pair(1, 5, "prompt-fills")]
    pairs[3].prompt[0].content = "sea " * 300
    full = {p.id: template.encode(tiny_tokenizer, p.side(p.chosen)) for p in pairs}
    max_len = max(len(full["fits"].input_ids), len(full["cut"].input_ids) - 30, 60)
    stats = PairTokenizeStats()
    rows = {r.pair_id: r for r in encode_pairs(template, tiny_tokenizer, pairs, max_len, stats)}
    assert set(rows) == {"fits", "cut", "long-reply"}
    assert stats.shortened == 1 and stats.truncated == 1 and stats.dropped_too_long == 1

    assert rows["fits"].chosen_ids == full["fits"].input_ids
    # "cut": the oldest turns went; what is left is the encoding of the pair from a user turn on,
    # BOS and system prompt kept
    cut = pairs[1]
    start = next(
        s
        for s in range(1, len(cut.prompt))
        if cut.prompt[s].role == "user"
        and len(template.encode(tiny_tokenizer, cut.side(cut.chosen, s)).input_ids) <= max_len
        and len(template.encode(tiny_tokenizer, cut.side(cut.rejected, s)).input_ids) <= max_len
    )
    assert rows["cut"].chosen_ids == template.encode(tiny_tokenizer, cut.side(cut.chosen, start)).input_ids
    assert rows["cut"].rejected_ids == template.encode(tiny_tokenizer, cut.side(cut.rejected, start)).input_ids
    assert rows["cut"].prompt_length == len(template.encode_prompt(tiny_tokenizer, cut.prompt_only(start)))
    # "long-reply": cut at max_len, the end-of-turn lost
    long_row = rows["long-reply"]
    assert len(long_row.chosen_ids) == max_len
    assert long_row.chosen_ids == full["long-reply"].input_ids[:max_len]
    for row in rows.values():
        assert max(len(row.chosen_ids), len(row.rejected_ids)) <= max_len


def test_bad_lines_are_named_and_skipped(cli, tiny_model_dir, data_dir):
    src = write_jsonl(
        data_dir / "pairs.jsonl",
        [
            {
                "id": "ok",
                "prompt": [{"role": "user", "content": "Hi there"}],
                "chosen": [{"role": "assistant", "content": "Hello!"}],
                "rejected": [{"role": "assistant", "content": "Go."}],
            },
            {
                "id": "bad-role",
                "prompt": [{"role": "user", "content": "Hi"}],
                "chosen": [{"role": "robot", "content": "x"}],
                "rejected": [{"role": "assistant", "content": "y"}],
            },
            {"id": "conv", "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]},
            {
                "id": "ends-assistant",
                "prompt": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "x"}],
                "chosen": [{"role": "assistant", "content": "y"}],
                "rejected": [{"role": "assistant", "content": "z"}],
            },
        ],
    )
    res = cli("data", "tokenize", src, "-m", tiny_model_dir, "-o", data_dir / "p.parquet", "--json")
    stats = res.json()["stats"]
    assert stats["written"] == 1 and stats["malformed"] == 3 and "3 malformed pair(s)" in res.stderr
    errors = [e.split("pairs.jsonl:", 1)[1] for e in open_catalog().get(res.json()["id"])["meta"]["errors"]]
    assert errors[0].startswith("2: field 'chosen[0].role': expected user or assistant")
    assert errors[1].startswith("3: expected a pair")
    assert errors[2].startswith("4: field 'prompt[1].role': the prompt must end with a user turn")


def test_stats_show_and_split_read_pairs(cli, tiny_model_dir, data_dir):
    pairs_path = data_dir / "pairs.jsonl"
    cli("data", "clean", FILES / "trl.jsonl", FILES / "shp.json", "-o", pairs_path, "--min-chars", "0")
    out = data_dir / "pairs.parquet"
    cli("data", "tokenize", pairs_path, "-m", tiny_model_dir, "-o", out)
    stats = cli("data", "stats", pairs_path, "--json").json()
    assert stats["kind"] == "pairs" and stats["pairs"] == 7 and stats["turns"] == {"1": 7}
    tstats = cli("data", "stats", out, "--json").json()
    assert tstats["kind"] == "tokenized-pairs" and tstats["pairs"] == 7
    table = pq.read_table(out)
    assert tstats["tokens"] == sum(table.column("length").to_pylist())
    shown = cli("data", "show", out, "--id", "qt3nxl:hkh25sc:hkh25lp", "--json").json()
    assert len(shown) == 1 and shown[0]["prompt_length"] < len(shown[0]["chosen_ids"])
    assert "chosen" in cli("data", "show", out, "-n", "1").stdout
    assert cli("data", "show", pairs_path, "-n", "2", "--json").json()[1]["chosen"][0]["content"] == "Paris."

    split = cli("data", "split", out, "--eval", "0.3", "--json").json()
    assert split["train"]["records"] + split["eval"]["records"] == 7
    train = pq.read_table(split["train"]["path"])
    assert read_metadata(split["train"]["path"])["kind"] == "pairs" and tuple(train.schema.names) == PAIR_COLUMNS
    cat = open_catalog()
    assert cat.get(split["eval"]["id"])["format"] == "tokenized-pairs"
    jsplit = cli("data", "split", pairs_path, "--eval", "0.3", "--json").json()
    assert cat.get(jsplit["train"]["id"])["format"] == "pairs"
    # the same seed puts a pair on the same side in JSONL and Parquet
    assert jsplit["eval"]["records"] == split["eval"]["records"]
