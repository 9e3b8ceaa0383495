"""Exact-answer grading: option letters, last numbers, boxed answers; `eval grade` end to end."""

import pytest

from openchat_cli.eval.grade import extract_boxed, extract_number, extract_option, grade_answer, to_number
from openchat_cli.eval.questions import Question
from store.catalog import open_catalog
from tests.eval.conftest import write_jsonl

OPTS = ["Paris", "Rome", "Berlin", "Madrid"]


@pytest.mark.parametrize(
    "text, letter",
    [
        ("The answer is (B).", "B"),
        ("Answer: C", "C"),
        ("answer is: **D**", "D"),
        ("(A) because Paris.", "A"),
        ("B. Rome is the capital.", "B"),
        ("C", "C"),
        ("I think it's Berlin.", "C"),
        ("\\boxed{D}", "D"),
        ("Between (A) and (B), the answer is (B)", "B"),
        ("paris", "A"),
        ("No idea.", None),
        ("(E)", None),
    ],
)
def test_extract_option(text, letter):
    assert extract_option(text, OPTS) == letter


@pytest.mark.parametrize(
    "text, number",
    [
        ("12 + 7 = 19", "19"),
        ("It costs $1,250.50 in total.", "1250.50"),
        ("#### 42", "42"),
        ("First 3 then 5 #### -8 apples", "-8"),
        ("The ratio is 3/4", "3/4"),
        ("none", None),
    ],
)
def test_extract_number(text, number):
    assert extract_number(text) == number


def test_boxed_and_numbers():
    assert extract_boxed("so \\boxed{\\frac{1}{2}} done") == "\\frac{1}{2}"
    assert extract_boxed("\\boxed{x^{2}+1}") == "x^{2}+1" and extract_boxed("no box") is None
    assert to_number("\\frac{1}{2}") == 0.5 and to_number("3/4") == 0.75 and to_number("1,000") == 1000.0
    assert to_number("50\\%") == 50.0 and to_number("abc") is None


def test_grade_answer_methods():
    mc = Question("1", None, ["?"], None, {"format": "choice", "options": OPTS, "label": ["B"]})
    assert grade_answer(mc, "The answer is (B)")["verdict"] == "correct"
    assert grade_answer(mc, "The answer is (C)") | {} == {
        "verdict": "incorrect",
        "score": 0.0,
        "raw": "C",
        "method": "option",
        "expected": ["B"],
    }
    assert grade_answer(mc, "hmm")["verdict"] == "error"
    num = Question("2", None, ["?"], None, {"format": "exact", "label": "#### 1,000"})
    assert grade_answer(num, "That makes 1000.")["verdict"] == "correct"
    assert grade_answer(num, "That makes 999 or so")["verdict"] == "incorrect"
    assert grade_answer(num, "I don't know")["verdict"] == "error"
    assert grade_answer(num, "\\boxed{1000}")["method"] == "boxed"
    frac = Question("3", None, ["?"], None, {"format": "exact", "label": "\\frac{1}{2}"})
    assert grade_answer(frac, "so \\boxed{0.5}")["verdict"] == "correct"
    text = Question("4", None, ["?"], None, {"format": "exact", "label": "x^2+1"})
    assert grade_answer(text, "\\boxed{x^2 + 1}")["verdict"] == "correct"
    assert grade_answer(text, "The answer is x^2+1.")["verdict"] == "correct"
    several = Question("5", None, ["?"], None, {"format": "exact", "label": [4, "four"]})
    assert grade_answer(several, "\\boxed{four}")["verdict"] == "correct"


def test_grade_command(cli, scripted, tmp_path):
    path = write_jsonl(
        tmp_path / "mc.jsonl",
        [
            {"id": "a", "question": "Capital of Italy?", "options": OPTS, "label": "B", "category": "geo"},
            {"id": "b", "question": "Capital of Spain?", "options": OPTS, "label": 3, "category": "geo"},
            {"id": "c", "question": "12+7?", "label": "19", "category": "math"},
            {"id": "d", "question": "2*21?", "label": "42", "category": "math"},
        ],
    )
    run = cli("eval", "answer", path, "-e", scripted.base_url, "-m", "m", "--json").json()["run_id"]
    cat = open_catalog()
    replies = {"a": "The answer is (B).", "b": "I would say (A).", "c": "12 + 7 = 19", "d": "Not sure."}
    for qid, text in replies.items():
        cat.update("answers", (run, qid), turns=[text])
    out = cli("eval", "grade", run, "--json").json()[0]
    assert (out["correct"], out["incorrect"], out["no_answer"], out["graded"]) == (2, 1, 1, 4)
    assert out["accuracy"] == 0.5 and out["categories"] == {"geo": 0.5, "math": 0.5}
    rows = {r["question_id"]: r for r in cat.rows("judgments", "eval_id = ?", [out["run_id"]])}
    assert rows["a"]["raw"] == "B" and rows["a"]["meta"] == {"expected": ["B"], "method": "option", "category": "geo"}
    assert rows["b"]["verdict"] == "incorrect" and rows["b"]["meta"]["expected"] == ["D"]
    assert rows["c"]["raw"] == "19" and rows["c"]["score"] == 1.0 and rows["c"]["mode"] == "exact"
    assert rows["d"]["verdict"] == "error" and rows["d"]["score"] == 0.0 and rows["d"]["parse_ok"] == 0
    # Re-grading replaces the run's grades instead of adding a second copy.
    again = cli("eval", "grade", run, "--json").json()[0]
    assert again["run_id"] == out["run_id"]
    assert list(again)[-1] == "unanswered" and again["unanswered"] == 0  # stored and printed after the summary
    assert cat.get(out["run_id"])["metrics"] == again
    line = " ".join(cli("eval", "grade", run).stdout.split())
    assert f"{out['run_id']} m: accuracy 50.0% (2/4), no answer found in 1" in line
    assert len(list(cat.rows("judgments", "eval_id = ?", [out["run_id"]]))) == 4
    text = cli("eval", "report", run).stdout
    assert "Accuracy" in text and "50.0%" in text


def test_grade_needs_labels(cli, scripted, mtbench_file):
    run = cli("eval", "answer", mtbench_file, "-e", scripted.base_url, "-m", "m", "--json").json()["run_id"]
    assert "no questions with an expected answer" in cli("eval", "grade", run, expect=2).stderr
