"""The store's read API: the primitives and the typed lookups the stages use instead of SQL."""

from __future__ import annotations

import pytest

from store.catalog import Catalog


@pytest.fixture
def cat(tmp_path):
    catalog = Catalog(tmp_path / "c.db")
    yield catalog
    catalog.close()


def test_primitives(cat):
    ds = cat.add_dataset(name="a", path="/tmp/a", format="raw", meta={"k": [1, 2]})
    cat.add_dataset(name="b", path="/tmp/b", format="raw")
    assert cat.one("select * from datasets where id = ?", [ds])["meta"] == {"k": [1, 2]}  # decoded
    assert cat.one("select * from datasets where id = 'ds-none'") is None
    assert cat.scalar("select name from datasets where id = ?", [ds]) == "a"
    assert cat.scalar("select name from datasets where id = 'ds-none'") is None
    assert cat.exists("select 1 from datasets where name = 'b'")
    assert not cat.exists("select 1 from datasets where name = 'c'")
    assert cat.count("datasets") == 2
    assert cat.count("datasets", name="a", format="raw") == 1
    assert cat.count("datasets", name="zzz") == 0
    assert cat.write("update datasets set name = 'c' where name = 'b'") == 1
    assert cat.count("datasets", name="c") == 1


def test_evals_match_order_and_involving(cat):
    answer = cat.add_eval(kind="answer", model="m", endpoint="e", questions_hash="h")
    other = cat.add_eval(kind="answer", model="m2", endpoint="e", questions_hash="h")
    single_old = cat.add_eval(kind="judge", parent_id=answer, model="j", endpoint="e")
    single_new = cat.add_eval(kind="judge", parent_id=answer, model="j", endpoint="e")
    pairwise = cat.add_eval(kind="judge", parent_id=other, baseline_id=answer, model="j", endpoint="e")
    graded = cat.add_eval(kind="grade", parent_id=answer)
    ids = lambda rows: [r["id"] for r in rows]  # noqa: E731

    assert cat.latest_eval("answer", questions_hash="h", endpoint="e", model="m")["id"] == answer
    assert cat.latest_eval("answer", model="nobody") is None
    # newest first by default; None matches an empty column (no baseline)
    assert ids(cat.evals("judge", parent_id=answer, baseline_id=None)) == [single_new, single_old]
    assert ids(cat.evals("judge", parent_id=other, baseline_id=answer)) == [pairwise]
    assert ids(cat.evals(("judge", "grade"), involving=answer, newest_first=False)) == [
        single_old,
        single_new,
        pairwise,
        graded,
    ]
    assert cat.latest_eval("grade", parent_id=answer)["id"] == graded
    with pytest.raises(TypeError, match="cannot match on"):
        cat.evals("judge", status="running")


def test_answers_questions_and_judgments(cat):
    run = cat.add_eval(kind="answer", model="m")
    cat.insert_many(
        "questions",
        [
            {"eval_id": run, "question_id": "1", "category": "math", "turns": ["q1"]},
            {"eval_id": run, "question_id": "2", "category": None, "turns": ["q2"]},
        ],
    )
    cat.insert(
        "answers",
        {
            "eval_id": run,
            "question_id": "1",
            "turns": ["a1"],
            "prompt_tokens": 3,
            "completion_tokens": 5,
            "latency_s": 0.5,
            "meta": {"truncated": True},
        },
    )
    assert cat.question_categories(run) == {"1": "math", "2": None}
    assert cat.question(run, "2")["turns"] == ["q2"]
    assert [q["question_id"] for q in cat.questions(run)] == ["1", "2"]
    assert [a["question_id"] for a in cat.answers(run)] == ["1"]
    assert cat.answer(run, "1")["turns"] == ["a1"] and cat.answer(run, "2") is None
    assert cat.answered_ids(run) == {"1"}
    assert cat.has_answer(run, "1") and not cat.has_answer(run, "2")
    totals = cat.answer_totals(run)
    assert tuple(totals) == (1, 3, 5, 0.5, 1)
    assert cat.answers_with_category(run) == [{"meta": {"truncated": True}, "category": "math"}]

    judge = cat.add_eval(kind="judge", parent_id=run, model="j")
    cat.insert_many(
        "judgments",
        [
            {
                "eval_id": judge,
                "question_id": "1",
                "turn": 1,
                "order": "BA",
                "mode": "pairwise",
                "verdict": "A",
                "parse_ok": 1,
            },
            {
                "eval_id": judge,
                "question_id": "1",
                "turn": 1,
                "order": "AB",
                "mode": "pairwise",
                "verdict": "tie",
                "parse_ok": 1,
            },
        ],
    )
    assert [j["order"] for j in cat.judgments(judge)] == ["BA", "AB"]  # as stored
    assert [j["order"] for j in cat.judgments(judge, by_unit=True)] == ["AB", "BA"]
    assert cat.judged_units(judge) == {("1", 1, "AB"), ("1", 1, "BA")}
    assert cat.has_judgment(judge, ("1", 1, "AB")) and not cat.has_judgment(judge, ("1", 2, "AB"))
    assert {(r["verdict"], r["n"]) for r in cat.verdict_tallies()} == {("A", 1), ("tie", 1)}
    assert cat.judged_question_stats() == [{"eval_id": judge, "q": 1, "mean": None}]


def test_recent_chats_and_get_of_a_removed_row(cat):
    first = cat.add_chat(title="first", endpoint=None, model=None)
    second = cat.add_chat(title="second", endpoint=None, model=None)
    assert [c["id"] for c in cat.recent_chats()] == [second, first]
    cat.update("chats", first, updated_at="2999-01-01T00:00:00+00:00")
    assert [c["id"] for c in cat.recent_chats()] == [first, second]
    cat.remove(second)
    with pytest.raises(Exception, match="no chat with id"):
        cat.get(second)
