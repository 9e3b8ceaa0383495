"""Question formats and validation errors that name the line."""

import json

import pytest

from openchat_cli.errors import OpenchatError
from openchat_cli.eval.questions import load_questions
from tests.eval.conftest import MTBENCH, write_jsonl


def test_mtbench(mtbench_file):
    qs = load_questions(mtbench_file)
    assert qs.format == "mtbench" and len(qs) == 4
    math = qs.questions[1]
    assert math.question_id == "111" and math.category == "math"
    assert math.turns == ["What is 12 + 7?", "And 12 * 7?"] and math.reference == ["19", "84"]
    assert len(qs.hash) == 16 and qs.hash == load_questions(mtbench_file).hash


def test_vicuna_alpaca_plain(tmp_path):
    vic = load_questions(
        write_jsonl(tmp_path / "v.jsonl", [{"question_id": 1, "text": "Tell me a joke.", "category": "generic"}])
    )
    assert vic.format == "vicuna" and vic.questions[0].turns == ["Tell me a joke."]

    alpaca = tmp_path / "alpaca.json"
    alpaca.write_text(
        json.dumps(
            [
                {"instruction": "Name a fruit.", "dataset": "helpful_base", "output": "x", "generator": "y"},
                {"instruction": "Translate", "input": "chat", "dataset": "koala"},
            ]
        )
    )
    qs = load_questions(alpaca)
    assert qs.format == "alpaca_eval"
    assert [q.question_id for q in qs.questions] == ["1", "2"]
    assert qs.questions[1].turns == ["Translate\n\nchat"] and qs.questions[1].category == "koala"
    assert qs.questions[1].meta["instruction"] == "Translate"

    plain = load_questions(write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "prompt": "Hi", "category": "chat"}]))
    assert plain.format == "plain" and plain.questions[0].question_id == "a"


def test_choice_and_exact(tmp_path):
    qs = load_questions(
        write_jsonl(
            tmp_path / "mc.jsonl",
            [
                {"question": "2+2?", "options": ["3", "4"], "label": "B"},
                {"question": "Capital of France?", "options": {"A": "Paris", "B": "Rome"}, "label": 0},
                {"question": "12+7?", "label": "19"},
            ],
        )
    )
    a, b, c = qs.questions
    assert a.meta["label"] == ["B"] and a.meta["options"] == ["3", "4"] and "(B) 4" in a.turns[0]
    assert b.meta["label"] == ["A"] and b.meta["options"] == ["Paris", "Rome"]
    assert c.meta["format"] == "exact" and c.meta["label"] == "19" and c.turns == ["12+7?"]


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"question_id": 1, "turns": ["a"]}', "{not json"], "q.jsonl:2: invalid JSON"),
        (['{"question_id": 1, "category": "x"}'], "cannot tell the format"),
        (['{"question_id": 1, "turns": []}'], "q.jsonl:1: field 'turns' must hold at least one"),
        (
            ['{"question_id": 1, "turns": ["a"]}', "", '{"question_id": 1, "turns": ["b"]}'],
            "q.jsonl:3: duplicate question id '1' (first seen at line 1)",
        ),
        (['{"question_id": 1, "turns": ["a"]}', '{"turns": ["b"]}'], "q.jsonl:2: missing field 'question_id'"),
        (['{"question_id": 1, "turns": ["a"], "reference": 5}'], "field 'reference' must be a list"),
        (['{"question": "x", "options": ["a", "b"], "label": "C"}'], "label 'C' is not one of the options A-B"),
        (['{"question_id": 1, "turns": ["a"]}', '{"id": 2, "prompt": "b"}'], "the file started as 'mtbench'"),
        (["[1, 2]"], "expected a JSON object"),
    ],
)
def test_bad_lines_are_named(tmp_path, lines, message):
    path = tmp_path / "q.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(OpenchatError) as err:
        load_questions(path)
    assert message in err.value.message


def test_empty_and_missing(tmp_path):
    (tmp_path / "e.jsonl").write_text("\n\n")
    with pytest.raises(OpenchatError, match="holds no questions"):
        load_questions(tmp_path / "e.jsonl")
    with pytest.raises(OpenchatError, match="does not exist"):
        load_questions(tmp_path / "nope.jsonl")


def test_cli_names_the_line(cli, tmp_path, scripted):
    path = write_jsonl(tmp_path / "q.jsonl", MTBENCH[:1])
    with open(path, "a") as fh:
        fh.write('{"question_id": 5, "turns": "not a list", "category": 3.5}\n{"oops"\n')
    result = cli("eval", "answer", path, "-e", scripted.base_url, "-m", "m", expect=2)
    assert "q.jsonl:3: invalid JSON" in result.stderr
    assert not scripted.requests
