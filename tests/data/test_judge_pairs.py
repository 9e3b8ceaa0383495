"""`openchat data pairs`: preference pairs from pairwise judge runs of scripted models and judges
on loopback (tests/eval/scripted.py), with lineage back to the judge and both answer runs."""

from __future__ import annotations

import pytest

from store.catalog import open_catalog
from tests.data.helpers import read_jsonl
from tests.eval.conftest import MTBENCH, write_jsonl
from tests.eval.scripted import ScriptedServer


@pytest.fixture(scope="module")
def scripted():
    server = ScriptedServer().start()
    yield server
    server.stop()


def _runs(cli, scripted, tmp_path, judge: str, questions=MTBENCH):
    path = write_jsonl(tmp_path / "question.jsonl", questions)
    runs = [
        cli("eval", "answer", path, "-e", scripted.base_url, "-m", model, "--json").json()["run_id"]
        for model in ("long-model", "short-model")
    ]
    judged = cli(
        "eval",
        "judge",
        runs[0],
        "--baseline",
        runs[1],
        "--mode",
        "pairwise",
        "--judge-endpoint",
        scripted.base_url,
        "--judge-model",
        judge,
        "--retry-wait",
        "0.01",
        "--json",
    ).json()[0]
    return runs, judged["run_id"]


def test_pairs_from_a_consistent_judge_with_lineage(cli, scripted, tmp_path):
    (long_run, short_run), judge_run = _runs(cli, scripted, tmp_path, "fair-judge")
    out = tmp_path / "pairs.jsonl"
    res = cli("data", "pairs", judge_run, "-o", out, "--json").json()
    counts = res["counts"]
    # 4 questions × 2 turns: the fair judge prefers the long model in both orders, at both turns.
    assert counts["judged_pairs"] == 8 and counts["kept"] == 8
    assert counts["dropped"] == {} and counts["chosen_from"] == {"answer_run": 8}
    pairs = read_jsonl(out)
    assert sorted(p["id"].split(":", 1)[1] for p in pairs) == sorted(
        f"{q['question_id']}:{turn}" for q in MTBENCH for turn in (1, 2)
    )
    answers = {
        run: {a["question_id"]: a["turns"] for a in open_catalog().answers(run)} for run in (long_run, short_run)
    }
    for p in pairs:
        _, qid, turn = p["id"].split(":")
        question = next(q for q in MTBENCH if str(q["question_id"]) == qid)
        long_replies, short_replies = answers[long_run][qid], answers[short_run][qid]
        assert p["prompt"] == [{"role": "user", "content": question["turns"][0], "weight": 0.0}]
        assert p["source"] == judge_run
        if turn == "1":
            assert p["chosen"] == [{"role": "assistant", "content": long_replies[0], "weight": 1.0}]
            assert p["rejected"] == [{"role": "assistant", "content": short_replies[0], "weight": 1.0}]
            continue
        # turn 2: each side is its own run's conversation (the first replies differ), as the judge read it;
        # only the judged second reply carries weight
        for side, replies in (("chosen", long_replies), ("rejected", short_replies)):
            assert p[side] == [
                {"role": "assistant", "content": replies[0], "weight": 0.0},
                {"role": "user", "content": question["turns"][1], "weight": 0.0},
                {"role": "assistant", "content": replies[1], "weight": 1.0},
            ]
        assert p["chosen"][2]["content"].startswith("[long-model]")
    cat = open_catalog()
    row = cat.get(res["id"])
    assert row["format"] == "pairs" and row["num_records"] == 8 and row["parent_id"] == judge_run
    ancestors = {a["id"] for a in cat.lineage(res["id"])["ancestors"]}
    assert {judge_run, long_run, short_run} <= ancestors
    shown = cli("catalog", "lineage", res["id"]).stdout
    assert judge_run in shown and long_run in shown and short_run in shown


def test_flips_are_dropped_and_nothing_is_registered(cli, scripted, tmp_path):
    """A judge that always says [[A]] flips with the display order: no pair agrees in both."""
    _, judge_run = _runs(cli, scripted, tmp_path, "biased-judge")
    out = tmp_path / "pairs.jsonl"
    res = cli("data", "pairs", judge_run, "-o", out, expect=2)
    assert "flipped 8" in res.stderr and not out.exists()
    assert not [d for d in open_catalog().list("datasets") if d["format"] == "pairs"]


def test_unparsed_verdicts_counted(cli, scripted, tmp_path):
    questions = MTBENCH[:2] + [{"question_id": 999, "category": "writing", "turns": ["MALFORMED request here"]}]
    _, judge_run = _runs(cli, scripted, tmp_path, "messy-judge", questions)
    counts = cli("data", "pairs", judge_run, "-o", tmp_path / "p.jsonl", "--json").json()["counts"]
    assert counts["kept"] == 4 and counts["dropped"] == {"unparsed": 1}


def test_refuses_what_is_not_a_pairwise_judge_run(cli, scripted, tmp_path):
    (long_run, _short_run), _ = _runs(cli, scripted, tmp_path, "fair-judge")
    single = cli(
        "eval",
        "judge",
        long_run,
        "--judge-endpoint",
        scripted.base_url,
        "--judge-model",
        "fair-judge",
        "--retry-wait",
        "0.01",
        "--json",
    ).json()[0]["run_id"]
    assert "single-answer judge run" in cli("data", "pairs", single, expect=2).stderr
    assert "is not a judge run" in cli("data", "pairs", long_run, expect=2).stderr


def test_later_turn_pairs_train_on_the_judged_reply_only(cli, scripted, tmp_path, tiny_model_dir, tiny_tokenizer):
    """A turn-2 pair tokenizes as two whole conversations (each with its own first reply) whose only
    supervised tokens are the judged second reply's."""
    import numpy as np

    from openchat_cli.train.pairs import load_pairs

    _, judge_run = _runs(cli, scripted, tmp_path, "fair-judge")
    cli("data", "pairs", judge_run, "-o", tmp_path / "pairs.jsonl", "--json")
    pairs = read_jsonl(tmp_path / "pairs.jsonl")
    cli("data", "tokenize", tmp_path / "pairs.jsonl", "--model", tiny_model_dir, "-o", tmp_path / "pairs.parquet")
    data = load_pairs(tmp_path / "pairs.parquet")
    assert len(data) == 2 * len(pairs) == 16
    for i, pair in enumerate(pairs):
        turn = pair["id"].rsplit(":", 1)[1]
        for k, side in enumerate(("chosen", "rejected")):
            ids, weights = data.row(2 * i + k)[:2]
            text = tiny_tokenizer.decode(np.asarray(ids)[np.asarray(weights) > 0])
            whole = tiny_tokenizer.decode(ids)
            judged = pair[side][-1]["content"]
            assert judged.split(" to:")[0] in text, (text, judged)
            if turn == "2":
                first = pair[side][0]["content"]
                assert "reply 1" in first and "reply 1" not in text and first.split(" to:")[0] in whole


def test_split_conversations_shares_equal_earlier_replies():
    from openchat_cli.data.judge_pairs import split_conversations

    users = ["u1", "u2", "u3"]
    prompt, chosen, rejected = split_conversations(users, ["same", "a2", "a3"], ["same", "b2", "b3"])
    assert [m["content"] for m in prompt] == ["u1", "same", "u2"] and all(m["weight"] == 0 for m in prompt)
    assert chosen == [
        {"role": "assistant", "content": "a2", "weight": 0.0},
        {"role": "user", "content": "u3", "weight": 0.0},
        {"role": "assistant", "content": "a3", "weight": 1.0},
    ]
    assert [m["content"] for m in rejected] == ["b2", "u3", "b3"]
    prompt, chosen, rejected = split_conversations(["u1"], ["a1"], ["b1"])
    assert prompt == [{"role": "user", "content": "u1", "weight": 0.0}]
    assert chosen == [{"role": "assistant", "content": "a1", "weight": 1.0}] and rejected[0]["content"] == "b1"
